"""The engines in a child process, so that the daemon's event loop never waits on them.

Importing torch holds the GIL in one stretch of about 0.4 s (torch._C's initialisation), and loading a
model holds it for seconds more in shorter stretches. In the daemon's own process that stalls the bot and
the folder watcher: the first NST job measured a loop lag p99 of up to 133 ms (docs/benchmarks.md). In a
child process the engines have an interpreter and a GIL of their own. The child also hands torch's memory
and the CUDA context back to the system when it exits after the idle unload, and a driver crash or an
out-of-memory kill fails one job instead of taking the daemon down.

The child never outlives the daemon: it asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`)
and exits at once when its command pipe reaches end of file, which is how it sees the daemon go even in the
middle of an ONNX Runtime call that no cancel reaches. A daemon restarted after a SIGKILL so never shares
the GPU with a stale child.

`ProcessRunner` is the parent's side: it has the `Runner` interface of job_model.py and is called from the
queue's worker thread. The child runs the ordinary `EngineRunner` and is started by the first job. Images
go to it as stored (JPEG bytes) and are decoded there, and the result comes back as the JPEG the queue
stores, encoded there: the daemon's process never holds a job's full-size pixels.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # registers its exit handler now, so that `_kill_children` runs before it
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from nst_daemon.config import Settings
from nst_daemon.engines import registry
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.jobs import Job, ProgressFn, RunResult

log = logging.getLogger(__name__)

POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
# Unloading a model can wait on the GPU driver; a child that does not answer in this time is stopped.
REPLY_TIMEOUT_S = 60.0
# After a cancel, an NST job stops at its next step: under a second, or a few on a busy CPU. One that has
# not stopped in this time (a hung driver) is ended with its process. A shutdown does not wait this long:
# at its deadline the daemon calls `abort`.
CANCEL_WAIT_S = 30.0

# Children still running when the interpreter exits. multiprocessing's own exit handler would SIGTERM them,
# which they ignore (see `serve`), and then wait forever; this handler, registered later, runs first.
_children: set[Any] = set()


@atexit.register
def _kill_children() -> None:
    for process in list(_children):
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT_S)


class EngineProcessDied(NstdError):
    """The child process ended in the middle of a job, not at the daemon's request; the next job starts a
    new one. The queue reads these attributes to decide who is to blame and whether to retry:

    - `exitcode`: the child's exit status when it exited by itself (a crash in native code, `os._exit`),
      else None.
    - `signal`: the number of the signal that killed it (e.g. 9 for SIGKILL, 11 for SIGSEGV), else None.
    - `oom_suspected`: True when that signal is SIGKILL and the daemon did not send it. On Linux that is
      nearly always the kernel's out-of-memory killer (or systemd-oomd, or an administrator's kill -9):
      the run needed more memory than the machine had, and a smaller working size may fit.

    A child that the daemon ends itself (a cancel, a shutdown) raises `Cancelled` instead, never this.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        signal: int | None = None,
        oom_suspected: bool = False,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = signal
        self.oom_suspected = oom_suspected


class RemoteTraceback(Exception):
    """The child's traceback, chained as the cause of the error raised here, so the job's log keeps it."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def engine_runner(settings: Settings) -> Any:
    """What the child runs by default: the real engines."""
    from nst_daemon.runner import EngineRunner

    return EngineRunner(settings)


class ProcessRunner:
    def __init__(self, settings: Settings, make_runner: Callable[[Settings], Any] = engine_runner) -> None:
        """`make_runner` builds the child's runner from the settings, in the child. It must be importable
        by name (a module-level function or class): the benchmarks pass a no-op one."""
        self.settings = settings
        self.make_runner = make_runner
        self._context = multiprocessing.get_context("spawn")  # fork would copy the loop's threads and locks
        self._process: Any = None
        self._commands: Connection | None = None
        self._events: Connection | None = None
        self._aborting = False  # `abort` ended the child: its death is no crash
        # One job or one unload at a time; the pipes carry one conversation.
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        with self._lock:
            self._start()
            try:
                kind, payload = self._converse(job, (content, *styles), progress, cancel)
            except EngineProcessDied:
                if cancel.is_set() or self._aborting:  # ended on purpose (a hurried shutdown): no crash
                    raise Cancelled() from None
                raise
            except BaseException:
                # Left mid-job (a progress callback failed, the thread was interrupted): the child's next
                # messages would belong to this job, so it goes, and the next job starts a new one.
                self._kill()
                raise
        if kind == "error":
            raise _rebuild(*payload)
        return payload[0]

    def _converse(
        self, job: Job, images: tuple[bytes, ...], progress: ProgressFn, cancel: threading.Event
    ) -> tuple[str, list[Any]]:
        """Send the job, relay its progress and cancel; return the final event: a result or an error."""
        self._send(("run", job, len(images)))
        for image in images:
            self._send(image)
        # A CycleGAN job is one ONNX Runtime call that no cancel interrupts: ending the process is the only
        # way to stop it, so it is not waited for. An NST job checks its cancel at every step.
        cancel_wait = CANCEL_WAIT_S if registry.get(job.engine).cancel_stops_run else 0.0
        cancel_sent: float | None = None
        while True:
            if cancel.is_set():
                if cancel_sent is None:
                    self._send(("cancel",))
                    cancel_sent = time.monotonic()
                if time.monotonic() - cancel_sent >= cancel_wait:
                    # `run` ends the process on the way out, as for any job left midway.
                    log.info("job %s: ending the engine process to cancel it", job.id)
                    raise Cancelled()
            event = self._receive(POLL_S)
            if event is None:
                continue
            kind, *payload = event
            if kind == "progress":
                # A preview (a small JPEG, engines/preview.py) rides along on some updates only.
                if len(payload) > 1 and payload[1] is not None:
                    progress(payload[0], payload[1])
                else:
                    progress(payload[0])
            elif kind in ("result", "error"):
                return kind, payload

    def unload_idle(self, idle_s: float) -> list[str]:
        """Unload the models idle for `idle_s`; when none is left loaded, the child exits and its memory
        (torch's, and the CUDA context's) goes back to the system."""
        if not self._lock.acquire(blocking=False):
            return []  # a job is running, so no model is idle
        try:
            if self._process is None:
                return []
            self._send(("unload_idle", idle_s))
            event = self._receive(REPLY_TIMEOUT_S)
            if event is None:
                log.warning("the engine process did not answer an unload request; stopping it")
                self._stop()
                return []
            _, unloaded, still_loaded = event
            if not still_loaded:
                self._stop()
            return unloaded
        except EngineProcessDied as exc:
            log.warning("%s", exc)
            return []
        finally:
            self._lock.release()

    def abort(self) -> None:
        """End the child now, from any thread (a second Ctrl-C): the job it runs raises `Cancelled` in
        the worker thread, so its queue re-queues it, and the next job starts a new child."""
        process = self._process
        if process is not None:
            self._aborting = True
            process.kill()  # the worker thread owns the pipes: it sees the child go and lets go of them

    def close(self) -> None:
        """Stop the child. The queue has finished or cancelled its job by now; should a job still hold
        the runner after STOP_TIMEOUT_S, the child is killed and that job fails."""
        if self._lock.acquire(timeout=STOP_TIMEOUT_S):
            try:
                self._stop()
            finally:
                self._lock.release()
        elif self._process is not None:
            self._process.kill()  # not _kill(): the worker thread still owns the pipes

    # --- the child's lifetime ---

    def _start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._discard()
        commands_out, commands_in = self._context.Pipe(duplex=False)
        events_out, events_in = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=serve,
            args=(self.settings, self.make_runner, commands_out, events_in, os.getpid()),
            name="nstd-engines",
            daemon=True,
        )
        process.start()
        _children.add(process)
        commands_out.close()  # the child's ends: closing ours lets each side see the other go away
        events_in.close()
        self._process, self._commands, self._events = process, commands_in, events_out
        self._aborting = False
        log.info("engine process started (pid %s)", process.pid)

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(EngineProcessDied):  # already gone: nothing to ask
            self._send(("stop",))
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("the engine process did not stop in %.0f s; killing it", STOP_TIMEOUT_S)
        log.info("engine process stopped (pid %s)", process.pid)
        self._kill()

    def _kill(self) -> None:
        """Kill the child if it still runs (a no-op for one that has exited) and let go of it."""
        if self._process is not None:
            self._process.kill()
            self._process.join(STOP_TIMEOUT_S)
        self._discard()

    def _discard(self) -> None:
        _children.discard(self._process)
        for connection in (self._commands, self._events):
            if connection is not None:
                connection.close()
        self._process = self._commands = self._events = None

    def _send(self, message: tuple[Any, ...] | bytes) -> None:
        """A command, or an image's bytes (sent as they are, not pickled)."""
        assert self._commands is not None
        try:
            if isinstance(message, bytes):
                self._commands.send_bytes(message)
            else:
                self._commands.send(message)
        except OSError:
            raise self._died() from None

    def _receive(self, timeout_s: float) -> tuple[Any, ...] | None:
        assert self._events is not None and self._process is not None
        try:
            if self._events.poll(timeout_s):
                return self._events.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if not self._process.is_alive():
            raise self._died()
        return None

    def _died(self) -> EngineProcessDied:
        process = self._process
        process.join(1.0)
        code = process.exitcode
        by_us = self._aborting
        self._discard()
        signum = -code if code is not None and code < 0 else None
        oom_suspected = signum == signal.SIGKILL and not by_us
        if signum is not None:
            try:
                how = f"was killed by {signal.Signals(signum).name}"
            except ValueError:
                how = f"was killed by signal {signum}"
            if oom_suspected:
                how += " (out of memory?)"
        else:
            how = f"exited with code {code}"
        (log.info if by_us else log.error)("the engine process %s", how)
        return EngineProcessDied(
            f"the engine process {how}; the next job starts a new one",
            exitcode=code if signum is None else None,
            signal=signum,
            oom_suspected=oom_suspected,
        )


def _rebuild(kind: str, message: str, error: BaseException | None, remote_traceback: str) -> BaseException:
    """The child's error as the parent raises it: the queue tells Cancelled, NstdError (a message for the
    user) and anything else (an engine bug) apart."""
    if kind == "cancelled":
        exc: BaseException = Cancelled(message)
    elif kind == "nstd":
        exc = NstdError(message)
    else:
        exc = error if error is not None else RuntimeError(message)
    exc.__cause__ = RemoteTraceback(remote_traceback)
    return exc


# The child's side (serve, and how an exception crosses the pipe) is engine_child's.
from nst_daemon.engine_child import _portable as _portable  # noqa: E402
from nst_daemon.engine_child import serve  # noqa: E402
