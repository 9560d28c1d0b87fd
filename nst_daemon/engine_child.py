"""The child's side of the engine process (engine_process.py explains why there is one): it runs the
ordinary `EngineRunner` on the commands the daemon sends down a pipe, and sends progress, results and
errors back. It dies with its parent."""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.job_model import RunResult

log = logging.getLogger(__name__)

# prctl(2): the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int | None) -> None:
    """Have the kernel SIGKILL this process when the daemon dies, however it dies (kill -9 included).

    Linux sends it when the *thread* that started the child ends: the daemon starts it from the asyncio
    executor's worker threads, which live as long as the daemon. Should the daemon already be gone before
    this call, the parent is someone else by now, and the child leaves at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def serve(
    settings: Settings,
    make_runner: Callable[[Settings], Any],
    commands: Connection,
    events: Connection,
    parent_pid: int | None = None,
) -> None:
    """The child's main: runs jobs from `commands` one at a time, reporting on `events`."""
    _die_with_parent(parent_pid)
    # Stopping is the parent's decision: systemd's SIGTERM and a terminal's Ctrl-C reach the whole process
    # group, and a job cut short here would fail instead of finishing within the grace period.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nst_daemon.logs import setup_logging

    setup_logging(settings.daemon.log_level)
    runner = make_runner(settings)
    cancel = threading.Event()
    work: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def read_commands() -> None:
        # Its own thread, so a cancel arrives while the main thread is inside an engine.
        while True:
            try:
                message = commands.recv()
                if message[0] == "run":  # the images follow, one message each
                    kind, job, count = message
                    message = (kind, job, [commands.recv_bytes() for _ in range(count)])
            except (EOFError, OSError):
                # The daemon is gone (or has let go of this process after killing it). Nobody can take a
                # result any more, and the main thread may be inside an ONNX Runtime call for a minute:
                # leave now, so the memory (on a GPU, a second copy of the models) goes with the daemon.
                os._exit(0)
            if message[0] in ("cancel", "stop"):
                cancel.set()
            if message[0] == "cancel":
                continue
            work.put(message)
            if message[0] == "stop":
                return

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    while True:
        kind, *payload = work.get()
        try:
            if kind == "stop":
                _leave()
            if kind == "unload_idle":
                events.send(("unloaded", runner.unload_idle(payload[0]), runner.loaded))
            elif kind == "run":
                cancel.clear()
                _run(runner, payload, cancel, events)
        except (BrokenPipeError, EOFError, OSError):
            return  # the parent is gone


def _leave() -> None:
    """Exit at once, as the daemon asked. Nothing here needs saving (results went down the pipe), and an
    orderly interpreter exit tears down torch and ONNX Runtime: 1.8 s measured on a busy 2-core box, time
    a shutdown within the grace period does not have."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(runner: Any, payload: list[Any], cancel: threading.Event, events: Connection) -> None:
    job, (content, *styles) = payload
    try:
        result = runner.run(
            job, content, styles, lambda part, preview=None: events.send(("progress", part, preview)), cancel
        )
    except (BrokenPipeError, EOFError):
        raise
    except Cancelled as exc:
        events.send(("error", "cancelled", exc.message, None, traceback.format_exc()))
    except NstdError as exc:
        events.send(("error", "nstd", exc.message, None, traceback.format_exc()))
    except Exception as exc:  # the parent logs it, with this traceback chained
        events.send(("error", "bug", f"{type(exc).__name__}: {exc}", _portable(exc), traceback.format_exc()))
    else:
        # Encoded here: the JPEG is a tenth of the pixels' size, and its encoder holds this process's GIL,
        # not the daemon's.
        events.send(("result", RunResult(None, result.report, jpeg=result.encoded())))


def _portable(exc: Exception) -> Exception | None:
    """`exc` if it survives pickling with its message intact (most built-in errors do), else None."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return copy if type(copy) is type(exc) and str(copy) == str(exc) else None
