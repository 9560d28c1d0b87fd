"""The engines in a child process: same results as in the daemon's process, errors that keep their
message, cancel, a killed child failing one job only, and the child going away when idle."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import image_corpus as corpus
import numpy as np
import pytest
from conftest import wait_until
from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import ImagesSettings, Settings
from nst_daemon.engine_process import EngineProcessDied, ProcessRunner, RemoteTraceback, _portable, _rebuild
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.jobs import Job
from nst_daemon.runner import EngineRunner, decode_inputs


def make_job(engine: str = "cyclegan", styles: list[str] | None = None, job_id: int = 1) -> Job:
    return Job(
        id=job_id,
        source="cli",
        owner="test",
        engine=engine,
        styles=["monet"] if styles is None else styles,
        params={},
        state="running",
        progress=0.0,
        attempts=1,
        error=None,
        input_keys=[],
        output_key=None,
        delivery="pending",
        delivery_attempts=0,
        reply={},
        created_at=time.time(),
        started_at=time.time(),
        finished_at=None,
    )


def photo(seed: int = 0, size: tuple[int, int] = (80, 60)) -> bytes:
    """A stored input, as the queue hands it to a runner."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return imaging.encode_image(Image.fromarray(pixels, "RGB"), "jpeg")


@pytest.fixture
def settings(tmp_path: Path, installed_models_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(installed_models_dir)},
            "nst": {"preset": "fast", "max_side": 128},
            "cyclegan": {"max_side": 64},
        }
    )


@pytest.fixture
def runner(settings: Settings) -> Any:
    runner = ProcessRunner(settings)
    yield runner
    runner.close()


def test_a_job_runs_in_the_child_with_the_in_process_result(
    runner: ProcessRunner, settings: Settings
) -> None:
    fractions: list[float] = []
    content = photo()
    result = runner.run(make_job(), content, [], fractions.append, threading.Event())
    child = runner.pid
    assert child is not None and child != os.getpid()
    here = EngineRunner(settings).run(make_job(), content, [], lambda fraction: None, threading.Event())
    # The child sends the result encoded: the same JPEG as the same pixels encoded here.
    assert result.image is None and result.jpeg == here.encoded()
    assert Image.open(io.BytesIO(result.jpeg)).size == (64, 48)
    assert result.report["model"] == "style_monet" and result.report["device"] == here.report["device"]
    assert fractions and fractions[-1] == 1.0
    # The child stays for the next job: the model is loaded once.
    runner.run(make_job(job_id=2), content, [], fractions.append, threading.Event())
    assert runner.pid == child


def test_errors_keep_their_message_and_the_child_goes_on(runner: ProcessRunner) -> None:
    with pytest.raises(NstdError, match=r"unknown style 'pointillism'; choose one of: .*monet") as caught:
        runner.run(make_job(styles=["pointillism"]), photo(), [], lambda f: None, threading.Event())
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "UnknownStyle" in str(caught.value.__cause__)
    child = runner.pid
    result = runner.run(make_job(job_id=2), photo(), [], lambda f: None, threading.Event())
    assert result.jpeg and runner.pid == child
    # The images are decoded in the child: one that will not decode fails its job, and names itself.
    cut = photo(size=(256, 192))[:600]
    with pytest.raises(NstdError, match=r"^style image 1: this image is damaged or incomplete$"):
        runner.run(make_job(job_id=3), photo(), [cut], lambda f: None, threading.Event())
    assert runner.pid == child


def test_the_runner_decodes_within_the_configured_limits(settings: Settings) -> None:
    big = photo(size=(300, 200))
    assert [image.size for image in decode_inputs([big, photo()], settings)] == [(300, 200), (80, 60)]
    small = settings.model_copy(update={"images": ImagesSettings(max_pixels=300 * 200 - 1)})
    with pytest.raises(imaging.ImageTooLarge, match=r"^the content image: image is 300×200"):
        decode_inputs([big], small)


def test_a_large_photo_decodes_no_larger_than_its_engine_needs(
    settings: Settings, decoded_sizes: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    content, style = corpus.noisy_photo((2400, 1600)), corpus.noisy_photo((2000, 2000), seed=1)
    full = decode_inputs([content, style], settings)
    assert [image.size for image in full] == [(2400, 1600), (2000, 2000)]
    # Fitted within 256 the content is 256 × 171, and NST scales the style to that area (209 × 209):
    # each decodes at the smallest scale that keeps four times its final size.
    reduced = decode_inputs([content, style], settings, max_side=256)
    assert [image.size for image in reduced] == [(1200, 800), (1000, 1000)]

    decoded_sizes.clear()
    runner = EngineRunner(settings)
    # A CycleGAN job at the configured max_side (64): an eighth keeps 4 × 64 across.
    result = runner.run(make_job(), content, [], lambda fraction: None, threading.Event())
    assert decoded_sizes == [(300, 200)]
    assert result.image.size == imaging.fitted_size((2400, 1600), 64) == (64, 43)
    # An NST job at its own max_side: the engine gets the reduced images and that side.
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(EngineRunner, "_run_nst", lambda self, *args: calls.append(args))
    job = make_job(engine="nst", styles=[])
    job.params["max_side"] = 256
    runner.run(job, content, [style], lambda fraction: None, threading.Event())
    (_, content_image, style_images, max_side, _, _) = calls[0]
    assert content_image.size == (1200, 800) and max_side == 256
    assert [image.size for image in style_images] == [(1000, 1000)]


def test_a_missing_model_is_the_pull_hint(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    settings = Settings.model_validate(
        {"paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")}}
    )
    runner = ProcessRunner(settings)
    try:
        with pytest.raises(NstdError) as caught:
            runner.run(make_job(), photo(), [], lambda f: None, threading.Event())
        hint = "model style_monet is not installed: run `nstd models pull style_monet`"
        assert caught.value.message == hint
    finally:
        runner.close()


def test_the_configured_cpu_threads_reach_the_engines_in_the_child(
    tmp_path: Path, installed_models_dir: Path
) -> None:
    """`nst.cpu_threads` and `cyclegan.cpu_threads`, through the runner the daemon uses."""
    settings = Settings.model_validate(
        {
            "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(installed_models_dir)},
            "nst": {"preset": "fast", "max_side": 64, "cpu_threads": 1},
            "cyclegan": {"max_side": 64, "cpu_threads": 1},
        }
    )
    runner = ProcessRunner(settings, make_runner=ThreadReportingRunner)
    try:
        nst = runner.run(
            make_job(engine="nst", styles=[]), photo(), [photo(1)], lambda f: None, threading.Event()
        )
        monet = runner.run(make_job(job_id=2), photo(), [], lambda f: None, threading.Event())
    finally:
        runner.close()
    assert nst.report["device"] == "cpu (1 thread)"
    assert monet.report["intra_op_threads"] == 1


class ThreadReportingRunner(EngineRunner):
    """The real runner, adding ONNX Runtime's thread count to the report (it has no other way out)."""

    def run(self, job: Job, *args: Any) -> Any:
        result = super().run(job, *args)
        if job.engine == "cyclegan":
            session = self._engines["style_monet"]._session
            result.report["intra_op_threads"] = session.get_session_options().intra_op_num_threads
        return result


def test_cancel_reaches_an_nst_job_in_the_child(runner: ProcessRunner) -> None:
    cancel = threading.Event()
    progressed = threading.Event()

    def progress(fraction: float) -> None:
        progressed.set()

    def cancel_after_progress() -> None:
        progressed.wait(120)
        cancel.set()

    threading.Thread(target=cancel_after_progress, daemon=True).start()
    job = make_job(engine="nst", styles=[])
    with pytest.raises(Cancelled):
        runner.run(job, photo(size=(128, 96)), [photo(1, (64, 64))], progress, cancel)
    assert progressed.is_set()
    assert runner.pid is not None, "a cancelled job leaves the child running for the next one"


def test_a_killed_child_fails_its_job_and_the_next_job_gets_a_new_one(runner: ProcessRunner) -> None:
    runner.run(make_job(), photo(), [], lambda f: None, threading.Event())
    first = runner.pid
    assert first is not None
    progressed = threading.Event()

    def kill_after_progress() -> None:
        progressed.wait(120)
        os.kill(first, signal.SIGKILL)

    threading.Thread(target=kill_after_progress, daemon=True).start()
    job, cancel = make_job(engine="nst", styles=[], job_id=2), threading.Event()
    with pytest.raises(EngineProcessDied, match=r"was killed by SIGKILL \(out of memory\?\); the next job"):
        runner.run(job, photo(size=(128, 96)), [photo(1, (64, 64))], lambda f: progressed.set(), cancel)
    assert runner.pid is None
    result = runner.run(make_job(job_id=3), photo(), [], lambda f: None, threading.Event())
    assert result.jpeg
    assert runner.pid not in (None, first)


def test_idle_unload_ends_the_child_and_the_next_job_starts_one(runner: ProcessRunner) -> None:
    assert runner.unload_idle(0.0) == [], "no child yet: nothing to unload"
    runner.run(make_job(), photo(), [], lambda f: None, threading.Event())
    child = runner.pid
    assert runner.unload_idle(3600.0) == [] and runner.pid == child, "recently used: stays loaded"
    assert runner.unload_idle(0.0) == ["style_monet"]
    assert runner.pid is None
    wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, message="the child process to exit")
    runner.run(make_job(job_id=2), photo(), [], lambda f: None, threading.Event())
    assert runner.pid not in (None, child)


def test_close_stops_the_child(runner: ProcessRunner) -> None:
    runner.run(make_job(), photo(), [], lambda f: None, threading.Event())
    child = runner.pid
    runner.close()
    assert runner.pid is None
    wait_until(lambda: not Path(f"/proc/{child}").exists(), 10, message="the child process to exit")


def test_remote_errors_are_rebuilt_for_the_queue() -> None:
    cancelled = _rebuild("cancelled", "cancelled", None, "Traceback ...")
    assert type(cancelled) is Cancelled and str(cancelled.__cause__) == "\nTraceback ..."
    assert type(_rebuild("nstd", "this image is damaged", None, "")) is NstdError
    bug = _rebuild("bug", "ValueError: bad shape", _portable(ValueError("bad shape")), "")
    assert type(bug) is ValueError and str(bug) == "bad shape"

    class Unpicklable(Exception):
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a} and {b}")

    assert _portable(Unpicklable("x", "y")) is None
    fallback = _rebuild("bug", "Unpicklable: x and y", None, "")
    assert type(fallback) is RuntimeError and str(fallback) == "Unpicklable: x and y"


def test_a_job_left_midway_takes_the_child_with_it(runner: ProcessRunner) -> None:
    """Should the caller leave a job early (here its progress callback fails), the child's later messages
    would belong to that job: the child goes, and the next job gets a new one and its own result."""

    def failing_progress(fraction: float) -> None:
        raise RuntimeError("the loop is closed")

    with pytest.raises(RuntimeError, match="the loop is closed"):
        runner.run(make_job(), photo(), [], failing_progress, threading.Event())
    assert runner.pid is None
    result = runner.run(make_job(job_id=2), photo(seed=5), [], lambda f: None, threading.Event())
    assert result.report["model"] == "style_monet" and result.jpeg
