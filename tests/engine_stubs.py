"""Runners for the engine process in tests: `ProcessRunner(settings, make_runner=ScriptedRunner)` runs one in
a real child process. They are importable by name (the child is spawned, not forked) and cost no CPU.

A job's params script what `ScriptedRunner.run` does in the child:
- `hang_s`: report progress, then sleep this long ignoring the cancel, as a CycleGAN job's one ONNX Runtime
  call does (default 0: return at once);
- `exit_code`: leave through `os._exit(code)`, like a crash in native code;
- `signal`: send this signal to itself (e.g. SIGSEGV);
- `preview`: also report a live-preview frame (a small blue JPEG) with the progress.
The result's report has the child's pid and its parent-death signal (`prctl(PR_GET_PDEATHSIG)`).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Any

from PIL import Image

from nst_daemon.jobs import Job, RunResult

PR_GET_PDEATHSIG = 2


def make_job(
    engine: str = "cyclegan", styles: list[str] | None = None, job_id: int = 1, **params: Any
) -> Job:
    return Job(
        id=job_id,
        source="cli",
        owner="test",
        engine=engine,
        styles=["monet"] if styles is None else styles,
        params=params,
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


def death_signal() -> int | None:
    """This process's parent-death signal (0: none), or None where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value


class ScriptedRunner:
    def __init__(self, settings: Any) -> None:
        self.loaded: list[str] = []

    def run(
        self, job: Job, content: bytes, styles: list[bytes], progress: Any, cancel: threading.Event
    ) -> RunResult:
        if "exit_code" in job.params:
            os._exit(job.params["exit_code"])
        if "signal" in job.params:
            os.kill(os.getpid(), job.params["signal"])
        progress(0.1)
        if job.params.get("preview"):  # a live-preview frame, as the NST engine sends one
            from nst_daemon.engines.preview import preview_jpeg

            progress(0.2, preview_jpeg(Image.new("RGB", (640, 480), (0, 0, 200))))
        time.sleep(job.params.get("hang_s", 0))
        report = {"pid": os.getpid(), "death_signal": death_signal()}
        return RunResult(Image.new("RGB", (8, 8)), report)

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


class HangingRunner(ScriptedRunner):
    """Every job reports progress and then hangs, ignoring its cancel, as a long CycleGAN run does: for
    $STUB_HANG_S seconds (default an hour)."""

    def run(self, job: Job, *args: Any) -> RunResult:
        hang_s = float(os.environ.get("STUB_HANG_S", "3600"))
        return super().run(make_job(job.engine, job.styles, job.id, hang_s=hang_s), *args)


def serve_with_hanging_engines() -> None:
    """`nstd --config sys.argv[1] run`, with HangingRunner as the engine process's runner."""
    import asyncio
    from pathlib import Path

    from nst_daemon.config import load_settings
    from nst_daemon.daemon import serve
    from nst_daemon.engine_process import ProcessRunner
    from nst_daemon.logs import setup_logging

    setup_logging("info")
    settings = load_settings(Path(sys.argv[1]))
    sys.exit(asyncio.run(serve(settings, ProcessRunner(settings, make_runner=HangingRunner))))


class _IdleModel:
    """A model that loads nothing: for tests of what reaches an engine, not of the engine."""

    loaded = True
    device_name = "cpu"
    provider = "cpu"

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass


def record_engine_runs(monkeypatch: Any, key: str = "nst") -> list[Any]:
    """Replace engine `key`'s model and run (the registry's plugin) with a recorder of what each run gets
    (its `EngineInput`: images, options); each run returns a 1×1 image."""
    from nst_daemon.engines import registry
    from nst_daemon.engines.registry import EngineOutput

    plugin = registry.get(key)
    calls: list[Any] = []

    def run(model: Any, given: Any) -> EngineOutput:
        calls.append(given)
        return EngineOutput(Image.new("RGB", (1, 1)), {}, "cpu")

    monkeypatch.setattr(plugin, "create", lambda paths, settings, device: _IdleModel())
    monkeypatch.setattr(plugin, "run", run)
    return calls
