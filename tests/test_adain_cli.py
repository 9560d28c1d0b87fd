"""`nstd stylize --engine adain` as a user runs it (the console script in a subprocess), the choice of the
default engine, and the daemon's runner running an "adain" job. The models are the random-init pytorch-AdaIN
files that test_adain's fixture installs with the real `models pull`."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import test_adain
from checkpoints import random_image
from engine_stubs import record_engine_runs
from PIL import Image

from nst_daemon import stylize
from nst_daemon.config import Settings
from nst_daemon.engines import ort_session
from nst_daemon.engines.adain import AdaINEngine
from nst_daemon.jobs import Job
from nst_daemon.manifest import InstalledModel, read_manifest, write_manifest
from nst_daemon.runner import EngineRunner

NSTD = str(Path(sys.executable).parent / "nstd")
# test_adain's session fixtures: random-init pytorch-AdaIN files, installed by the real `models pull`.
adain_checkpoints = test_adain.adain_checkpoints
adain_models = test_adain.adain_models


def write_config(path: Path, models_dir: Path) -> Path:
    path.write_text(
        f'[paths]\nmodels_dir = "{models_dir}"\nstate_dir = "{path.parent / "state"}"\n\n'
        '[adain]\ndevice = "cpu"\ncpu_threads = 1\n',
        encoding="utf-8",
    )
    return path


def nstd(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [NSTD, "--config", str(config), "stylize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    photo, first, second = tmp_path / "photo.png", tmp_path / "first.png", tmp_path / "second.png"
    random_image((53, 37), seed=21).save(photo)  # odd sizes: padded to 56×40 inside, cropped back
    random_image((40, 40), seed=22).save(first)
    random_image((70, 30), seed=23).save(second)
    return photo, first, second


def engine_for(models: Path) -> AdaINEngine:
    return AdaINEngine(models / "adain_vgg.onnx", models / "adain_decoder.onnx", device="cpu", cpu_threads=1)


def test_stylize_with_two_weighted_styles_end_to_end(adain_models: Path, images, tmp_path: Path) -> None:
    photo, first, second = images
    config = write_config(tmp_path / "config.toml", adain_models)
    output = tmp_path / "out.png"
    result = nstd(
        config, photo, "-o", output, "--style-image", first, "--style-image", second,
        "--style-weight", "3", "--style-weight", "1", "--strength", "0.7",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # Only AdaIN is installed here, so it is the default engine; the last line says where it ran.
    assert result.stdout.splitlines()[-1].endswith("on CPUExecutionProvider"), result.stdout
    with Image.open(output) as image:
        got = np.asarray(image.convert("RGB"), dtype=int)
    assert got.shape == (37, 53, 3)
    with Image.open(photo) as content, Image.open(first) as one, Image.open(second) as two:
        want = engine_for(adain_models).stylize(content, [one, two], weights=[3, 1], strength=0.7)
    assert np.abs(got - np.asarray(want, dtype=int)).max() <= 1
    # The weights matter: the other way round is another picture.
    flipped = tmp_path / "flipped.png"
    again = nstd(
        config, photo, "-o", flipped, "--engine", "adain", "--style-image", first, "--style-image", second,
        "--style-weight", "1", "--style-weight", "3", "--strength", "0.7",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    with Image.open(flipped) as image:
        assert np.abs(np.asarray(image, dtype=int) - got).mean() > 1


def test_max_side_fits_the_result(adain_models: Path, images, tmp_path: Path) -> None:
    photo, first, _ = images
    config = write_config(tmp_path / "config.toml", adain_models)
    output = tmp_path / "small.jpg"
    result = nstd(config, photo, "-o", output, "--style-image", first, "--max-side", "40")
    assert result.returncode == 0, result.stderr
    with Image.open(output) as image:
        assert image.size == (40, 28)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strength", "1.5"], "error: strength must be a number from 0 to 1 (got 1.5)"),
        (["--strength", "-0.1"], "error: strength must be a number from 0 to 1 (got -0.1)"),
        (["--style-weight", "1", "--style-weight", "2"], "error: got 2 style weights for 1 style image;"),
        (["--style-weight", "-1"], "error: style weights must be non-negative numbers with a positive sum"),
    ],
)
def test_bad_options_are_one_line(adain_models: Path, images, tmp_path: Path, args, message) -> None:
    photo, first, _ = images
    config = write_config(tmp_path / "config.toml", adain_models)
    output = tmp_path / "out.png"
    line = one_error_line(nstd(config, photo, "-o", output, "--style-image", first, *args))
    assert line.startswith(message), line
    assert not output.exists()


def test_a_pretrained_style_refuses_a_strength_out_of_range(
    adain_models: Path, images, tmp_path: Path
) -> None:
    photo, _, _ = images
    config = write_config(tmp_path / "config.toml", adain_models)
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "o.png", "--style", "monet", "--strength", "1.5")
    )
    assert line == "error: strength must be a number from 0 to 1 (got 1.5)"


def test_a_missing_model_is_one_line(adain_models: Path, images, tmp_path: Path) -> None:
    photo, first, _ = images
    models = tmp_path / "models"
    models.mkdir()
    # The encoder alone: the decoder is what is missing.
    shutil.copyfile(adain_models / "adain_vgg.onnx", models / "adain_vgg.onnx")
    write_manifest(models, {"adain_vgg": read_manifest(adain_models)["adain_vgg"]})
    config = write_config(tmp_path / "config.toml", models)
    line = one_error_line(
        nstd(config, photo, "-o", tmp_path / "o.png", "--engine", "adain", "--style-image", first)
    )
    assert line == "error: model adain_decoder is not installed: run `nstd models pull adain_decoder`"


# --- the default engine -------------------------------------------------------------------------------------


def fake_install(models: Path, names: list[str]) -> None:
    entries = {}
    for name in names:
        (models / f"{name}.bin").write_bytes(b"x")
        entries[name] = InstalledModel(
            name=name, kind="test", sha256="0" * 64, size=1, source="test", installed_at=time.time(),
            files=[f"{name}.bin"], runnable=f"{name}.bin", pinned="import",
        )  # fmt: skip
    write_manifest(models, entries)


@pytest.mark.parametrize(
    ("installed", "gpu", "expected"),
    [
        (["adain_vgg", "adain_decoder", "vgg19"], False, "adain"),  # CPU only: the instant engine
        (["adain_vgg", "adain_decoder", "vgg19"], True, "nst"),
        (["vgg19"], False, "nst"),  # only one installed: that one
        (["adain_vgg", "adain_decoder"], True, "adain"),
        (["adain_vgg", "vgg19"], True, "nst"),  # half of AdaIN is not AdaIN
        ([], False, "adain"),
    ],
)
def test_default_engine(tmp_path: Path, monkeypatch, installed: list[str], gpu: bool, expected: str) -> None:
    fake_install(tmp_path, installed)
    monkeypatch.setattr(ort_session, "nvidia_driver_present", lambda: gpu)
    settings = Settings.model_validate({"paths": {"models_dir": str(tmp_path), "state_dir": str(tmp_path)}})
    assert stylize.default_engine(settings, None) == expected
    if len(installed) == 3:  # --device cpu makes it a CPU-only run whatever the machine has
        assert stylize.default_engine(settings, "cpu") == "adain"


# --- the daemon's runner ------------------------------------------------------------------------------------


def test_the_runner_runs_an_adain_job(adain_models: Path, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "paths": {"models_dir": str(adain_models), "state_dir": str(tmp_path)},
            "adain": {"device": "cpu", "cpu_threads": 1},
        }
    )
    content, style = random_image((45, 33), seed=31), random_image((30, 30), seed=32)

    def encoded(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    params = {"strength": 0.5, "style_weights": [1.0], "preserve_colors": False}
    job = Job(
        id=1, source="folder", owner="t", engine="adain", styles=[], params=params, state="running",
        progress=0.0, attempts=1, error=None, input_keys=["a", "b"], output_key=None, delivery="pending",
        delivery_attempts=0, reply={}, created_at=time.time(), started_at=None, finished_at=None,
    )  # fmt: skip
    fractions: list[float] = []
    result = EngineRunner(settings).run(
        job, encoded(content), [encoded(style)], fractions.append, threading.Event()
    )
    want = engine_for(adain_models).stylize(content, [style], strength=0.5)
    assert np.array_equal(np.asarray(result.image), np.asarray(want))
    assert fractions[-1] == 1.0
    assert json.loads(json.dumps(result.report))["strength"] == 0.5
    assert result.report["device"] == "CPUExecutionProvider"


def test_style_weights_reach_nst_too(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    fake_install(tmp_path, ["vgg19"])
    photo = tmp_path / "photo.png"
    random_image((40, 30), seed=1).save(photo)
    calls = record_engine_runs(monkeypatch, "nst")
    settings = Settings.model_validate({"paths": {"models_dir": str(tmp_path), "state_dir": str(tmp_path)}})
    stylize.run(
        settings, photo, tmp_path / "out.jpg", style=None, style_images=[photo, photo], preset=None,
        max_side=None, device=None, preserve_colors=False, console=Console(quiet=True), engine="nst",
        style_weights=[2.0, 1.0],
    )  # fmt: skip
    assert calls[0].options["weights"] == [2.0, 1.0]


def test_an_adain_job_goes_through_the_queue(adain_models: Path, tmp_path: Path) -> None:
    """JobRequest(engine="adain", style_images=...) is accepted, and the real runner finishes it: the path
    the folder and the bot will use."""
    import asyncio

    from test_jobs import jpeg, make_queue, run_until_final

    from nst_daemon.jobs import JobRequest

    sections = {
        "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(adain_models)},
        "adain": {"device": "cpu", "cpu_threads": 1},
    }

    async def scenario() -> Job:
        queue = make_queue(tmp_path, None, **sections)
        queue.runner = EngineRunner(queue.settings)
        request = JobRequest(
            source="cli", owner="u", engine="adain", content=jpeg((200, 40, 40), (45, 33)),
            style_images=[jpeg((20, 20, 220), (30, 30))], params={"strength": 0.5},
        )  # fmt: skip
        job = await queue.submit(request)
        return await run_until_final(queue, job.id, limit_s=120)

    job = asyncio.run(scenario())
    assert job.state == "done", job.error
    assert job.output_key
