"""`nstd styles sheet PHOTO -o OUTPUT` as a user runs it (the console script in a subprocess, the tiny
random-init CycleGAN models), and the sheet's cache key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import random_image
from PIL import Image
from test_adain_cli import one_error_line, write_config

from nst_daemon import style_sheet
from nst_daemon.config import load_settings
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.job_model import RunResult
from nst_daemon.style_sheet import LABEL_HEIGHT, TILE, SheetStyle

NSTD = str(Path(sys.executable).parent / "nstd")


def sheet(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [NSTD, "--config", str(config), "styles", "sheet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_styles_sheet_cli(installed_models_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", installed_models_dir)
    photo = tmp_path / "photo.png"
    random_image((300, 200), seed=5).save(photo)
    output = tmp_path / "sheet.jpg"

    result = sheet(config, photo, "-o", output)
    assert result.returncode == 0, result.stderr
    assert "6 style(s)" in result.stdout
    with Image.open(output) as picture:
        # The photo and six built-in styles: a 3×3 grid of labelled tiles.
        assert picture.size == (3 * TILE, 3 * (TILE + LABEL_HEIGHT))
        first = picture.crop((0, 0, TILE, TILE)).convert("L")
        second = picture.crop((TILE, 0, 2 * TILE, TILE)).convert("L")
        assert first.tobytes() != second.tobytes()  # the stylized tile is not the photo
        label = picture.crop((0, TILE, TILE, TILE + LABEL_HEIGHT)).convert("L")
        assert label.getextrema()[0] < 128  # ink under the tile

    before = output.read_bytes()
    refused = one_error_line(sheet(config, photo, "-o", output))
    assert "exists" in refused and "--force" in refused
    assert output.read_bytes() == before
    assert "is the input" in one_error_line(sheet(config, photo, "-o", photo, "--force"))
    assert sheet(config, photo, "-o", output, "--force").returncode == 0


def test_styles_sheet_without_styles_is_one_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    config = write_config(tmp_path / "config.toml", models)
    photo = tmp_path / "photo.png"
    random_image((64, 48), seed=6).save(photo)
    assert "no styles to show" in one_error_line(sheet(config, photo, "-o", tmp_path / "out.jpg"))
    assert not (tmp_path / "out.jpg").exists()
    assert "no such file" in one_error_line(sheet(config, tmp_path / "nope.jpg", "-o", tmp_path / "o.jpg"))


def test_cache_key_follows_the_styles() -> None:
    photo = style_sheet.sample_photo()
    monet = SheetStyle("monet", "a" * 64)
    key = style_sheet.cache_key([monet], photo)
    assert key == style_sheet.cache_key([SheetStyle("monet", "a" * 64)], photo)
    assert key != style_sheet.cache_key([monet, SheetStyle("ink", "1.5")], photo)
    assert key != style_sheet.cache_key([SheetStyle("monet", "b" * 64)], photo)  # a new model
    assert key != style_sheet.cache_key([monet], style_sheet.sample_photo(200, 100))


class TileRunner:
    """Gives each style a flat tile, or raises what `fails` maps its style to."""

    def __init__(self, fails: dict[str, Exception] | None = None) -> None:
        self.fails = fails or {}
        self.ran: list[str] = []

    def run(self, job, content, styles, progress, cancel) -> RunResult:
        self.ran.append(job.styles[0])
        if job.styles[0] in self.fails:
            raise self.fails[job.styles[0]]
        return RunResult(image=Image.new("RGB", (32, 24), (0, 120, 0)), report={})


def test_a_sheet_stops_when_the_daemon_does_and_never_restarts_the_engines_for_the_next_tile(
    tmp_path: Path,
) -> None:
    settings = load_settings(write_config(tmp_path / "config.toml", tmp_path / "models"))
    styles = [SheetStyle(name, "v", engine="cyclegan") for name in ("monet", "cezanne", "ukiyoe")]
    photo = style_sheet.sample_photo()
    # A failing engine leaves its tile out and the sheet goes on ...
    runner = TileRunner({"monet": NstdError("model missing")})
    image = style_sheet.build(settings, runner, None, photo, styles, tile=32)
    assert runner.ran == ["monet", "cezanne", "ukiyoe"] and image.size == (2 * 32, 2 * (32 + LABEL_HEIGHT))
    # ... but a cancelled run (its engine process ended by a stopping daemon) ends the sheet.
    runner = TileRunner({"cezanne": Cancelled()})
    with pytest.raises(Cancelled):
        style_sheet.build(settings, runner, None, photo, styles, tile=32)
    assert runner.ran == ["monet", "cezanne"]
    # And once the daemon stops taking work, no further tile starts.
    runner = TileRunner()
    answers = iter([True, False])
    with pytest.raises(Cancelled, match="stopped"):
        style_sheet.build(settings, runner, None, photo, styles, tile=32, keep_going=lambda: next(answers))
    assert runner.ran == ["monet"]
