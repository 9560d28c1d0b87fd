"""Acceptance for issue 20's engine side: a throw-away engine (invert_engine.py) and one catalog entry,
registered here, run through `nstd stylize` with no other source file changed; and the strength blend
every engine without a native strength gets."""

from __future__ import annotations

import time
from pathlib import Path

import invert_engine
import numpy as np
import pytest
from checkpoints import random_image
from PIL import Image, ImageOps
from typer.testing import CliRunner

from nst_daemon import style_catalog
from nst_daemon.catalog_file import default_catalog_path
from nst_daemon.cli import app
from nst_daemon.engines import registry
from nst_daemon.manifest import InstalledModel, write_manifest
from nst_daemon.strength import blend_with_content, from_lab, to_lab


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A models dir with the packaged catalog plus the invert entry, the invert model installed."""
    registry.register(invert_engine.InvertPlugin)
    models = tmp_path / "models"
    models.mkdir()
    catalog = models / "catalog.toml"
    catalog.write_text(default_catalog_path().read_text(encoding="utf-8") + invert_engine.CATALOG_ENTRY)
    (models / "invert.bin").write_bytes(b"\x00" * 4)
    model = InstalledModel(
        name="invert_model", kind="invert", sha256="0" * 64, size=4, source="test", installed_at=time.time(),
        files=["invert.bin"], runnable="invert.bin", pinned="import",
    )  # fmt: skip
    write_manifest(models, {"invert_model": model})
    path = tmp_path / "config.toml"
    path.write_text(
        f'[paths]\nmodels_dir = "{models}"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[models]\ncatalog = "{catalog}"\n',
        encoding="utf-8",
    )
    return path


def stylize(config: Path, *args: str | Path) -> str:
    result = CliRunner().invoke(app, ["--config", str(config), "stylize", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_catalog_entry_makes_a_style(config: Path) -> None:
    from nst_daemon.config import load_settings

    settings = load_settings(config, environ={})
    assert style_catalog.engine_for_style("invert", settings) == "invert"
    assert style_catalog.style_label("invert", settings) == "Negative"
    assert style_catalog.job_label("invert", ["invert"], 0, settings) == "Negative"
    assert style_catalog.file_label("invert", ["invert"]) == "invert"


def test_nstd_stylize_runs_a_registered_engine(config: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    random_image((40, 30), seed=3).save(photo)
    output = tmp_path / "out.png"
    printed = stylize(config, photo, "-o", output, "--style", "Invert")
    assert f"wrote {output} (40×30)" in printed
    with Image.open(photo) as original, Image.open(output) as result:
        assert np.array_equal(np.asarray(result), np.asarray(ImageOps.invert(original.convert("RGB"))))


def test_strength_blends_a_registered_engine_with_the_content(config: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    random_image((40, 30), seed=4).save(photo)
    half, none = tmp_path / "half.png", tmp_path / "none.png"
    stylize(config, photo, "-o", half, "--style", "invert", "--strength", "0.5")
    stylize(config, photo, "-o", none, "--style", "invert", "--strength", "0")
    with Image.open(photo) as original:
        content = original.convert("RGB")
    want = blend_with_content(content, ImageOps.invert(content), 0.5)
    with Image.open(half) as result:
        assert np.array_equal(np.asarray(result), np.asarray(want))
        assert not np.array_equal(np.asarray(result), np.asarray(content))
    with Image.open(none) as result:  # strength 0 is the content, up to the Lab round trip's rounding
        assert np.abs(np.asarray(result, dtype=int) - np.asarray(content, dtype=int)).max() <= 1


def test_the_lab_round_trip_keeps_the_image() -> None:
    image = random_image((32, 24), seed=5)
    back = np.asarray(from_lab(to_lab(image)), dtype=int)
    assert np.abs(back - np.asarray(image, dtype=int)).max() <= 1


def test_the_lab_blend_is_perceptual_not_rgb() -> None:
    # Half-way from saturated red to saturated green: an RGB mix is a dull olive (128, 128, 0); Lab's
    # mid-point keeps more lightness.
    red, green = Image.new("RGB", (2, 2), (255, 0, 0)), Image.new("RGB", (2, 2), (0, 255, 0))
    mixed = np.asarray(blend_with_content(red, green, 0.5))[0, 0]
    assert mixed.astype(int).sum() > 256
