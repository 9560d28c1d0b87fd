"""The size a job works at, one rule for `nstd stylize` and the daemon's runner (torch-free).

An NST preset brings its own size (fast 256, balanced 512, best 768) and `nst.max_side` caps it for the
card: with the default 512 cap, `fast` runs at 256 and `best` at 512 until the cap is raised. An explicit
size (`--max-side`, a job's own `max_side`) wins over both. CycleGAN has no presets: `cyclegan.max_side`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nst_daemon.config import Settings

# The longest side each NST preset is tuned for; engines.nst.PRESETS uses these.
PRESET_MAX_SIDE: dict[str, int] = {"fast": 256, "balanced": 512, "best": 768}


def working_side(
    settings: Settings, engine: str, *, preset: str | None = None, explicit: int | None = None
) -> int:
    """The longest side of the result for a job of `engine` ("nst" or "cyclegan")."""
    if explicit:
        return int(explicit)
    if engine == "cyclegan":
        return settings.cyclegan.max_side
    if engine == "adain":
        return settings.adain.max_side
    chosen = PRESET_MAX_SIDE.get(preset or settings.nst.preset, settings.nst.max_side)
    return min(chosen, settings.nst.max_side)
