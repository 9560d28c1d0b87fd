"""The size a job works at: one rule (engines.presets.working_side) for `nstd stylize` and the runner."""

from __future__ import annotations

import pytest

from nst_daemon.config import Settings
from nst_daemon.engines import registry
from nst_daemon.engines.presets import PRESET_MAX_SIDE, working_side


def settings(nst_max_side: int = 512, preset: str = "balanced") -> Settings:
    return Settings.model_validate(
        {"nst": {"max_side": nst_max_side, "preset": preset}, "cyclegan": {"max_side": 640}}
    )


@pytest.mark.parametrize(
    ("cap", "default", "preset", "explicit", "expected"),
    [
        (512, "balanced", "fast", None, 256),  # used to be 512: the config's cap always won
        (512, "balanced", "balanced", None, 512),
        (512, "balanced", "best", None, 512),  # the cap is the card's limit
        (1024, "balanced", "best", None, 768),
        (1024, "fast", None, None, 256),  # no preset asked for: nst.preset's
        (512, "balanced", "fast", 400, 400),  # an explicit size wins
    ],
)
def test_nst_size(cap: int, default: str, preset: str | None, explicit: int | None, expected: int) -> None:
    current = settings(cap, default)
    assert working_side(current, "nst", preset=preset, explicit=explicit) == expected
    params = {key: value for key, value in (("preset", preset), ("max_side", explicit)) if value}
    assert registry.get("nst").max_side(current, params)  # what the pipeline asks == expected


def test_cyclegan_size_is_its_own_setting_or_the_explicit_one() -> None:
    current = settings()
    assert working_side(current, "cyclegan", preset="fast") == 640
    assert registry.get("cyclegan").max_side(current, {}) == 640
    assert registry.get("cyclegan").max_side(current, {"max_side": 100}) == 100


def test_the_engine_presets_use_these_sizes() -> None:
    from nst_daemon.engines.nst import PRESETS

    assert {name: options.max_side for name, options in PRESETS.items()} == PRESET_MAX_SIDE
