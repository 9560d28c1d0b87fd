"""Acceptance for issue 20's engine side: a throw-away engine (invert_engine.py) and one catalog entry,
registered here, run through `nstd stylize`, through a real daemon's watched folder and through the bot's
style buttons (fake Bot API), with no other source file changed; and the strength blend every engine
without a native strength gets."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import invert_engine
import numpy as np
import pytest
from checkpoints import random_image
from conftest import wait_until
from fake_telegram import FakeTelegram
from PIL import Image, ImageOps
from test_bot_flows import BotHarness, result_call
from typer.testing import CliRunner

from nst_daemon import style_catalog
from nst_daemon.catalog_file import default_catalog_path
from nst_daemon.cli import app
from nst_daemon.engines import registry
from nst_daemon.manifest import InstalledModel, write_manifest
from nst_daemon.strength import blend_with_content, from_lab, to_lab

TESTS = Path(__file__).resolve().parent


def install_invert(models: Path) -> Path:
    """`models` with the packaged catalog plus the invert entry, and the invert model installed; the
    catalog's path."""
    registry.register(invert_engine.InvertPlugin)
    models.mkdir(parents=True)
    catalog = models / "catalog.toml"
    catalog.write_text(default_catalog_path().read_text(encoding="utf-8") + invert_engine.CATALOG_ENTRY)
    (models / "invert.bin").write_bytes(b"\x00" * 4)
    model = InstalledModel(
        name="invert_model", kind="invert", sha256="0" * 64, size=4, source="test", installed_at=time.time(),
        files=["invert.bin"], runnable="invert.bin", pinned="import",
    )  # fmt: skip
    write_manifest(models, {"invert_model": model})
    return catalog


@pytest.fixture
def config(tmp_path: Path) -> Path:
    catalog = install_invert(tmp_path / "models")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[paths]\nmodels_dir = "{catalog.parent}"\nstate_dir = "{tmp_path / "state"}"\n\n'
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


def test_the_daemons_watched_folder_runs_a_registered_engine(
    tmp_path: Path, daemon_config, daemon_process
) -> None:
    from nst_daemon.config import load_settings

    catalog = install_invert(tmp_path / "invert-models")
    config = daemon_config(
        paths={"models_dir": str(catalog.parent)},
        models={"catalog": str(catalog)},
        watch={"enabled": True, "settle_s": 0.1},
    )
    watch = load_settings(config).watch.dir
    # The daemon and its engine process import the plugin by name (registry.PLUGINS_ENV).
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {registry.PLUGINS_ENV: "invert_engine", "PYTHONPATH": path}
    daemon = daemon_process(config, env).start()
    inbox = watch / "inbox" / "invert"
    assert inbox.is_dir(), "the catalog's new style has its inbox folder"
    photo = random_image((40, 30), seed=6)
    part = inbox / "photo.png.part"
    photo.save(part, "PNG")
    part.rename(inbox / "photo.png")
    result = watch / "outbox" / "invert" / "photo.invert.jpg"
    try:
        wait_until(result.exists, 90, 0.1, "the inverted photo in the outbox")
    except AssertionError:
        print("\n".join(daemon.lines))
        raise
    assert daemon.stop() == 0
    with Image.open(result) as image:
        got = np.asarray(image.convert("RGB"), dtype=int)
    want = np.asarray(ImageOps.invert(photo), dtype=int)
    assert np.abs(got - want).mean() < 8  # a JPEG of the inverted photo


class InvertHarness(BotHarness):
    """The bot harness with the real runner and a catalog that has the invert style."""

    def __init__(self, server: FakeTelegram, state_dir: Path, catalog: Path) -> None:
        super().__init__(server, state_dir)
        self.catalog = catalog
        from nst_daemon.runner import EngineRunner

        self.runner = EngineRunner(self.settings())  # type: ignore[assignment]

    def settings(self, **queue: object):  # type: ignore[override]
        settings = super().settings(**queue)
        models = settings.models.model_copy(update={"catalog": self.catalog})
        paths = settings.paths.model_copy(update={"models_dir": self.catalog.parent})
        return settings.model_copy(update={"models": models, "paths": paths})


def test_the_bots_style_buttons_offer_and_run_a_registered_engine(tmp_path: Path) -> None:
    catalog = install_invert(tmp_path / "models")
    with FakeTelegram() as server:
        harness = InvertHarness(server, tmp_path / "state", catalog).start()
        try:
            user = 1001
            harness.allow(user)
            mark = server.mark()
            server.send_text(user, "/styles")
            listing = server.wait_text(user, r"invert \(Negative\)", since=mark)
            assert "style:invert" in listing.button_data
            photo = random_image((40, 30), seed=7)
            buffer = io.BytesIO()
            photo.save(buffer, "JPEG", quality=95)
            server.send_photo(user, buffer.getvalue())
            question = server.wait_text(user, "Which style", since=mark)
            assert "style:invert" in question.button_data
            server.press(user, "style:invert")
            result = result_call(server, user, mark, timeout=60)
            assert "Negative" in result.text
            data = next(iter(result.files.values()))  # the photo (a thumbnail may follow)
            with Image.open(io.BytesIO(data)) as image:
                got = np.asarray(image.convert("RGB"), dtype=int)
            with Image.open(buffer) as sent:
                want = np.asarray(ImageOps.invert(sent.convert("RGB")), dtype=int)
            assert got.shape == want.shape and np.abs(got - want).mean() < 8
        finally:
            harness.close()
