"""The engines in a child process: same results as in the daemon's process, errors that keep their
message, cancel, a killed child failing one job only, and the child going away when idle."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import image_corpus as corpus
import numpy as np
import pytest
from conftest import REPO, wait_until
from engine_stubs import ScriptedRunner, make_job, record_engine_runs
from PIL import Image

from nst_daemon import engine_process, imaging
from nst_daemon.config import ImagesSettings, Settings
from nst_daemon.engine_process import EngineProcessDied, ProcessRunner, RemoteTraceback, _portable, _rebuild
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.jobs import Job
from nst_daemon.runner import EngineRunner, decode_inputs


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
    calls = record_engine_runs(monkeypatch, "nst")
    job = make_job(engine="nst", styles=[])
    job.params["max_side"] = 256
    runner.run(job, content, [style], lambda fraction: None, threading.Event())
    given = calls[0]
    assert given.content.size == (1200, 800) and given.options["options"].max_side == 256
    assert [image.size for image in given.styles] == [(1000, 1000)]


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
    with pytest.raises(
        EngineProcessDied, match=r"was killed by SIGKILL \(out of memory\?\); the next job"
    ) as died:
        runner.run(job, photo(size=(128, 96)), [photo(1, (64, 64))], lambda f: progressed.set(), cancel)
    # A SIGKILL the daemon did not send: the queue's blame reads these.
    assert (died.value.signal, died.value.exitcode, died.value.oom_suspected) == (signal.SIGKILL, None, True)
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


# --- the child's lifetime: cancel, abort, crashes, the parent's death (stub runners: no CPU) --------------


@pytest.fixture
def scripted(settings: Settings) -> Any:
    runner = ProcessRunner(settings, make_runner=ScriptedRunner)
    yield runner
    runner.close()


def run_in_thread(runner: ProcessRunner, job: Job, cancel: threading.Event) -> tuple[threading.Event, dict]:
    """Start `job` in a thread; returns (set once the child reported progress, {"error"/"result": ...})."""
    progressed, outcome = threading.Event(), {}

    def target() -> None:
        try:
            outcome["result"] = runner.run(job, b"", [], lambda f: progressed.set(), cancel)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return progressed, outcome


@pytest.mark.parametrize("engine", ["cyclegan", "nst"])
def test_cancel_ends_a_run_that_does_not_stop_by_itself(
    scripted: ProcessRunner, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CycleGAN job is one ONNX Runtime call that no cancel reaches (here: a 10-minute sleep). The
    cancel ends the child: at once for CycleGAN, after CANCEL_WAIT_S for an NST job that did not stop."""
    monkeypatch.setattr(engine_process, "CANCEL_WAIT_S", 1.0)
    cancel = threading.Event()
    progressed, outcome = run_in_thread(scripted, make_job(engine, hang_s=600), cancel)
    assert progressed.wait(60)
    child = scripted.pid
    cancel.set()
    outcome["thread"].join(60)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    wait_until(lambda: gone(child), 10, message="the cancelled child to end")
    # The next job gets a new child.
    result = scripted.run(make_job(engine, job_id=2), b"", [], lambda f: None, threading.Event())
    assert result.report["pid"] not in (None, child)


def test_abort_ends_the_child_at_once_and_the_job_is_cancelled_not_failed(scripted: ProcessRunner) -> None:
    """A second Ctrl-C: the daemon aborts the run; the queue gets Cancelled (and re-queues the job)."""
    progressed, outcome = run_in_thread(scripted, make_job("nst", hang_s=600), threading.Event())
    assert progressed.wait(60)
    child = scripted.pid
    scripted.abort()
    outcome["thread"].join(60)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert gone(child) and scripted.pid is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"exit_code": 3}, (None, 3, False, "exited with code 3")),
        ({"signal": signal.SIGSEGV}, (signal.SIGSEGV, None, False, "was killed by SIGSEGV;")),
        ({"signal": signal.SIGKILL}, (signal.SIGKILL, None, True, "was killed by SIGKILL (out of memory?);")),
    ],
)
def test_a_dead_child_says_how_it_died(scripted: ProcessRunner, params: dict, expected: tuple) -> None:
    with pytest.raises(EngineProcessDied) as died:
        scripted.run(make_job(**params), b"", [], lambda f: None, threading.Event())
    error = died.value
    assert (error.signal, error.exitcode, error.oom_suspected) == expected[:3]
    assert expected[3] in error.message


def test_the_child_asks_to_die_with_its_parent(scripted: ProcessRunner) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    result = scripted.run(make_job(), b"", [], lambda f: None, threading.Event())
    assert result.report["death_signal"] == signal.SIGKILL


PARENT = """
import sys, threading
from nst_daemon.config import Settings
from nst_daemon.engine_process import ProcessRunner
from engine_stubs import ScriptedRunner, make_job

settings = Settings.model_validate({"paths": {"state_dir": sys.argv[1], "models_dir": sys.argv[1]}})
runner = ProcessRunner(settings, make_runner=ScriptedRunner)
reported = []

def progress(fraction):
    if not reported:
        reported.append(print(runner.pid, flush=True))

runner.run(make_job(hang_s=600), b"", [], progress, threading.Event())
"""


def gone(pid: int | None) -> bool:
    """The process has ended (a zombie left for a parent that does not reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("how", ["main thread", "worker thread"])
def test_the_child_dies_with_a_killed_parent(tmp_path: Path, how: str) -> None:
    """The daemon SIGKILLed in the middle of a run that ignores cancels: its engine child goes too, instead
    of holding its memory (on a GPU, a second copy of the models beside a restarted daemon's) for
    minutes. The daemon starts children from its executor's threads, hence both cases."""
    script = (
        PARENT
        if how == "main thread"
        else PARENT.replace(
            'runner.run(make_job(hang_s=600), b"", [], progress, threading.Event())',
            "threading.Thread(target=runner.run, args=(make_job(hang_s=600), b'', [], progress, "
            "threading.Event())).start()",
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait(10)
        # Within about a second in practice; the bound is only there so that a failure ends the test.
        wait_until(lambda: gone(child), 20, interval=0.02, message="the orphaned engine child to end")
    finally:
        parent.kill()
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)
