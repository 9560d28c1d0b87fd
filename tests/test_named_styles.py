"""Named styles: `nstd styles add/list/remove` as a user runs them, `nstd stylize --style NAME` giving what
its images give, the watched folder's inbox/NAME/ working for a style added while the daemon runs, and every
refusal in one line. The models: test_adain's random-init pytorch-AdaIN files, installed by `models pull`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_adain
from checkpoints import random_image
from PIL import Image
from toml_config import write_config

from nst_daemon import db, named_styles
from nst_daemon.config import load_settings
from nst_daemon.daemon import Daemon
from nst_daemon.engines.adain import AdaINEngine
from nst_daemon.store import open_store

NSTD = str(Path(sys.executable).parent / "nstd")
adain_checkpoints = test_adain.adain_checkpoints
adain_models = test_adain.adain_models


def make_config(tmp_path: Path, models_dir: Path, **sections: dict) -> Path:
    base: dict[str, dict] = {
        "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(models_dir)},
        "adain": {"device": "cpu", "cpu_threads": 1},
        "watch": {"enabled": False, "dir": str(tmp_path / "watch"), "settle_s": 0.2},
        "daemon": {"grace_period_s": 5, "log_level": "info"},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return write_config(tmp_path / "config.toml", base)


def nstd(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [NSTD, "--config", str(config), *map(str, args)], capture_output=True, text=True, timeout=240, env=env
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    photo, first, second = tmp_path / "photo.png", tmp_path / "first.png", tmp_path / "second.jpg"
    random_image((53, 37), seed=31).save(photo)
    random_image((40, 40), seed=32).save(first)
    random_image((70, 30), seed=33).save(second)
    return photo, first, second


def stored_keys(tmp_path: Path) -> list[str]:
    settings = load_settings(tmp_path / "config.toml")
    listing = open_store(settings).list_objects_v2(Bucket=settings.store.bucket, Prefix="styles/")
    return sorted(entry["Key"] for entry in listing.get("Contents", []))


def test_add_list_remove(adain_models: Path, images, tmp_path: Path) -> None:
    _, first, second = images
    config = make_config(tmp_path, adain_models, watch={"enabled": True})
    out = ok(
        nstd(config, "styles", "add", "My Style", first, second, "--strength", "0.6",
             "--style-weight", "3", "--style-weight", "1")
    )  # fmt: skip
    assert "style mystyle saved: 2 image(s), adain" in out
    # The watched folder's inbox/NAME/ is there at once, for a daemon that is already running.
    assert (tmp_path / "watch" / "inbox" / "mystyle").is_dir()
    keys = stored_keys(tmp_path)
    assert len(keys) == 2 and keys[0].startswith("styles/mystyle/") and keys[1].endswith(".jpg"), keys
    assert Path(first).read_bytes() in [
        open_store(load_settings(config)).get_object(Bucket="nstd", Key=key)["Body"].read() for key in keys
    ]
    listing = ok(nstd(config, "styles", "list"))
    row = next(line for line in listing.splitlines() if line.startswith("mystyle"))
    assert row.split() == ["mystyle", "adain", "0.6", "2", "3,", "1"], row
    assert ok(nstd(config, "styles", "remove", "MyStyle")).strip() == "style mystyle removed"
    assert stored_keys(tmp_path) == []
    assert "mystyle" not in ok(nstd(config, "styles", "list"))
    assert (tmp_path / "watch" / "inbox" / "mystyle").is_dir()  # the user's folder stays
    assert one_error_line(nstd(config, "styles", "remove", "mystyle")).startswith(
        "error: no named style 'mystyle'"
    )


def test_stylize_with_a_named_style_equals_its_images(adain_models: Path, images, tmp_path: Path) -> None:
    photo, first, second = images
    config = make_config(tmp_path, adain_models)
    ok(nstd(config, "styles", "add", "pair", first, second, "--strength", "0.6",
            "--style-weight", "3", "--style-weight", "1"))  # fmt: skip
    named, direct = tmp_path / "named.png", tmp_path / "direct.png"
    ok(nstd(config, "stylize", photo, "-o", named, "--style", "Pair"))
    ok(
        nstd(config, "stylize", photo, "-o", direct, "--engine", "adain", "--style-image", first,
             "--style-image", second, "--style-weight", "3", "--style-weight", "1", "--strength", "0.6")
    )  # fmt: skip
    with Image.open(named) as a, Image.open(direct) as b:
        got, want = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    assert got.shape == (37, 53, 3)
    assert np.array_equal(got, want)
    # Not what the images give at full strength: the stored strength is used.
    full = tmp_path / "full.png"
    ok(nstd(config, "stylize", photo, "-o", full, "--style", "pair", "--strength", "1"))
    with Image.open(full) as image:
        assert np.abs(np.asarray(image, dtype=int) - got).mean() > 1
    # The default output name carries the style's name.
    ok(nstd(config, "stylize", photo, "-o", tmp_path, "--style", "pair"))
    assert (tmp_path / "photo.pair.png").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Van Gogh", "error: 'vangogh' is a built-in style; choose another name"),
        ("summer → winter", "error: 'summer2winter' is a built-in style"),
        ("NST", "error: 'nst' is reserved"),
        ("default", "error: 'default' is reserved"),
        ("instant", "error: 'instant' is reserved"),
        ("!!!", "error: '!!!' is not a usable style name"),
    ],
)
def test_bad_names_are_refused(adain_models: Path, images, tmp_path: Path, name: str, message: str) -> None:
    _, first, _ = images
    config = make_config(tmp_path, adain_models)
    assert one_error_line(nstd(config, "styles", "add", name, first)).startswith(message)
    assert stored_keys(tmp_path) == []


def test_other_refusals_are_one_line(adain_models: Path, images, tmp_path: Path) -> None:
    photo, first, second = images
    config = make_config(tmp_path, adain_models)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    line = one_error_line(nstd(config, "styles", "add", "mine", first, text))
    assert line.startswith(f"error: {text}: ") and "image" in line, line
    line = one_error_line(nstd(config, "styles", "add", "mine", tmp_path / "absent.png"))
    assert line.endswith("absent.png: no such file"), line
    line = one_error_line(nstd(config, "styles", "add", "mine", first, "--strength", "2"))
    assert line.startswith("error: strength must be a number from 0 to 1"), line
    line = one_error_line(
        nstd(config, "styles", "add", "mine", first, "--style-weight", "1", "--style-weight", "1")
    )
    assert line.startswith("error: got 2 style weights for 1 style image"), line
    assert stored_keys(tmp_path) == []
    # A name already taken: refused without --force, replaced with it (the old images go).
    ok(nstd(config, "styles", "add", "mine", first))
    old = stored_keys(tmp_path)
    line = one_error_line(nstd(config, "styles", "add", "mine", second))
    assert (
        line == "error: style 'mine' already exists: `nstd styles remove mine` first, or add it with --force"
    )
    assert stored_keys(tmp_path) == old
    assert not (tmp_path / "watch").exists()  # watch.enabled is false here: no folders made for nothing
    ok(nstd(config, "styles", "add", "mine", second, "--force"))
    new = stored_keys(tmp_path)
    assert len(new) == 1 and new != old and new[0].endswith(".jpg")
    # A name that is neither built-in nor named.
    line = one_error_line(nstd(config, "stylize", photo, "-o", tmp_path / "o.png", "--style", "picasso"))
    assert line.startswith("error: unknown style 'picasso'; choose one of: monet") and "mine" in line, line
    # A named style carries its own engine and weights.
    line = one_error_line(
        nstd(config, "stylize", photo, "-o", tmp_path / "o.png", "--style", "mine", "--engine", "nst")
    )
    assert line == "error: --engine does not apply to mine: a named style has its own"


def test_a_missing_model_is_refused(adain_models: Path, images, tmp_path: Path) -> None:
    _, first, _ = images
    empty = tmp_path / "no-models"
    empty.mkdir()
    config = make_config(tmp_path, empty)
    line = one_error_line(nstd(config, "styles", "add", "mine", first))
    assert line == (
        "error: engine adain needs models adain_vgg and adain_decoder, not installed: "
        "run `nstd models pull adain_vgg adain_decoder`"
    )
    line = one_error_line(nstd(config, "styles", "add", "mine", first, "--engine", "nst"))
    assert line.startswith("error: engine nst needs model vgg19, not installed"), line
    assert stored_keys(tmp_path) == []


def test_the_config_accepts_a_named_default_style(tmp_path: Path, adain_models: Path) -> None:
    config = make_config(tmp_path, adain_models, telegram={"default_style": "My Style"})
    assert load_settings(config).telegram.default_style == "mystyle"


def test_inbox_folder_of_a_style_added_while_the_daemon_runs(
    adain_models: Path, images, tmp_path: Path
) -> None:
    """The real daemon (in-process, its engine process and all) is already watching when `nstd styles add`
    runs; a photo dropped in the new inbox/NAME/ then comes out stylized by that style, and so does one in
    inbox/default/ when the default style names it."""
    photo, first, second = images
    config = make_config(tmp_path, adain_models, watch={"enabled": True}, telegram={"default_style": "pair"})
    settings = load_settings(config)
    watch = settings.watch.dir

    async def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        files = sorted(str(p.relative_to(watch)) for p in watch.rglob("*") if p.is_file())
        assert path.exists(), files

    async def scenario() -> Daemon:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            assert not (watch / "inbox" / "pair").exists()
            added = await asyncio.to_thread(
                nstd, config, "styles", "add", "pair", first, second, "--strength", "0.6",
                "--style-weight", "3", "--style-weight", "1",
            )  # fmt: skip
            ok(added)
            (watch / "inbox" / "pair" / "holiday.png").write_bytes(photo.read_bytes())
            (watch / "inbox" / "default" / "plain.png").write_bytes(photo.read_bytes())
            await wait_for(watch / "outbox" / "pair" / "holiday.pair.jpg")
            await wait_for(watch / "outbox" / "default" / "plain.pair.jpg")
            await wait_for(watch / "done" / "pair" / "holiday.png")
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()
        return daemon

    daemon = asyncio.run(scenario())
    jobs = list(daemon.queue.db["jobs"].rows)
    assert [(job["engine"], json.loads(job["styles"]), job["state"]) for job in jobs] == [
        ("adain", ["pair"], "done"),
        ("adain", ["pair"], "done"),
    ]
    assert json.loads(jobs[0]["params"])["strength"] == 0.6
    engine = AdaINEngine(
        adain_models / "adain_vgg.onnx", adain_models / "adain_decoder.onnx", device="cpu", cpu_threads=1
    )
    with Image.open(photo) as content, Image.open(first) as one, Image.open(second) as two:
        want = np.asarray(engine.stylize(content, [one, two], weights=[3, 1], strength=0.6), dtype=int)
    with Image.open(watch / "outbox" / "pair" / "holiday.pair.jpg") as result:
        got = np.asarray(result.convert("RGB"), dtype=int)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 4  # the folder's result is a JPEG


def test_the_style_record_survives_a_reopen(tmp_path: Path, adain_models: Path, images) -> None:
    _, first, _ = images
    settings = load_settings(make_config(tmp_path, adain_models))
    database = db.connect(settings.db_path)
    style = named_styles.add(settings, database, open_store(settings), "Keep", [first], strength=0.25)
    again = named_styles.get(db.connect(settings.db_path), "keep")
    assert again == style and again.params == {"style_name": "keep", "strength": 0.25}


def test_the_runner_gives_an_nst_style_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named NST style's job carries `style_weights` in its params (NamedStyle.params); the runner hands
    them to the NST engine as it does for AdaIN."""
    import io
    import threading
    from types import SimpleNamespace

    from nst_daemon.config import Settings
    from nst_daemon.jobs import Job
    from nst_daemon.runner import EngineRunner

    calls: list[dict] = []

    def fake_stylize(content: Image.Image, styles: list[Image.Image], **options: object) -> SimpleNamespace:
        calls.append(options)
        return SimpleNamespace(image=content, device="cpu", steps=1, scales=1, losses={}, oom_retries=0)

    runner = EngineRunner(Settings.model_validate({"paths": {"state_dir": str(tmp_path)}}))
    monkeypatch.setattr(runner, "_model", lambda plugin, names: SimpleNamespace(stylize=fake_stylize))
    style = named_styles.NamedStyle("two", "nst", None, [3.0, 1.0], ["a", "b"], 0.0)
    job = Job(
        id=1, source="folder", owner="t", engine="nst", styles=["two"], params=style.params, state="running",
        progress=0.0, attempts=1, error=None, input_keys=["c", "a", "b"], output_key=None, delivery="pending",
        delivery_attempts=0, reply={}, created_at=time.time(), started_at=None, finished_at=None,
    )  # fmt: skip
    buffer = io.BytesIO()
    random_image((40, 30), seed=5).save(buffer, "PNG")
    data = buffer.getvalue()
    runner.run(job, data, [data, data], lambda fraction: None, threading.Event())
    assert calls[0]["weights"] == [3.0, 1.0]


def test_a_default_style_that_names_no_style_fails_the_file_with_its_reason(
    adain_models: Path, images, tmp_path: Path
) -> None:
    photo, _, _ = images
    config = make_config(tmp_path, adain_models, watch={"enabled": True}, telegram={"default_style": "ghost"})
    settings = load_settings(config)
    failed = settings.watch.dir / "failed" / "default" / "plain.png.error.txt"

    async def scenario() -> None:
        daemon = Daemon(settings)
        await daemon.start()
        try:
            (settings.watch.dir / "inbox" / "default" / "plain.png").write_bytes(photo.read_bytes())
            deadline = time.monotonic() + 60
            while not failed.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            daemon.stop_event.set()
            await daemon.shutdown()

    asyncio.run(scenario())
    assert failed.read_text() == (
        "the default style 'ghost' is neither a built-in style nor a named style (`nstd styles list`)\n"
    )
    assert (settings.watch.dir / "failed" / "default" / "plain.png").read_bytes() == photo.read_bytes()
