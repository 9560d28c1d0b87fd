"""Composition root for `nstd run`: wires the database, store, queue, worker, folder and bot in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from nst_daemon import db as database
from nst_daemon import firstrun
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.jobs import JobQueue, Runner
from nst_daemon.logs import redactor
from nst_daemon.manifest import read_manifest
from nst_daemon.sdnotify import Notifier
from nst_daemon.store import expire, open_store

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600.0
CLOSE_TIMEOUT_S = 8.0
# A shutdown ends within daemon.grace_period_s plus this, whatever is queued or being delivered: systemd's
# TimeoutStopSec (30 s, for the default grace of 20 s) must leave a margin above it before its SIGKILL.
SHUTDOWN_MARGIN_S = 4.0
# After a second Ctrl-C (or SIGTERM): what is left of the shutdown gets this long.
HURRY_S = 2.0
# Of the time left, what the queue's step leaves to the engines and the bot to close cleanly.
CLOSE_RESERVE_S = 1.0
# A job still running at the queue's deadline has its engine process ended; the queue then gets this long
# to queue it again before the shutdown goes on without it.
ABORT_WAIT_S = 0.5
EXIT_FATAL = 1  # a background task died: exit non-zero, so Restart=on-failure starts nstd again


def make_runner(settings: Settings) -> Runner:
    """Where the engines run: a child process of this daemon, or Ray Serve replicas (cluster.backend)."""
    if settings.cluster.backend == "ray":
        # Imported only here: a daemon with backend = "local" never loads Ray.
        from nst_daemon.cluster.runner import RayRunner

        return RayRunner(settings)
    from nst_daemon.engine_process import ProcessRunner

    return ProcessRunner(settings)


class Daemon:
    def __init__(self, settings: Settings, runner: Runner | None = None, notifier: Notifier | None = None):
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.stop_event = asyncio.Event()
        self._runner = runner
        self._tasks: list[asyncio.Task[Any]] = []
        self.queue: JobQueue | None = None
        self.watcher: Any = None
        self.bot: Any = None
        self.exit_code = 0
        self._signals = 0
        self._deadline: float | None = None  # set when a shutdown starts; a second signal brings it forward

    async def start(self) -> None:
        settings = self.settings
        db = database.connect(settings.db_path)
        store = open_store(settings)
        if self._runner is None:
            self._runner = make_runner(settings)
        self.queue = JobQueue(db, store, settings.store.bucket, settings, self._runner)
        if not await firstrun.pull_missing(settings, self.stop_event, self.notifier):
            return  # stopped during the download; serve() shuts down at once
        self._report_missing_models()
        await self.queue.recover()

        if settings.watch.enabled:
            from nst_daemon.watch import FolderWatcher

            self.watcher = FolderWatcher(settings, self.queue)
            await self.watcher.start()

        token = settings.telegram_token()
        if token:
            redactor.add(token)
            from nst_daemon.bot import BotService

            self.bot = BotService(settings, db, self.queue, token)
            await self.bot.start()
            self._spawn(self.bot.run(), "telegram polling")
        else:
            log.info(
                "no Telegram token configured: running without the bot; to add one, "
                "export NSTD_TELEGRAM__TOKEN=123456:ABC... (from @BotFather) or set telegram.token_file, "
                "then restart"
            )

        self._spawn(self.queue.run_worker(), "worker")
        self._spawn(self.queue.redelivery_loop(), "redelivery")
        self._spawn(self.queue.idle_unload_loop(), "idle unload")
        self._spawn(self._sweep_loop(), "retention")
        self._spawn(self._status_loop(), "status")
        if self.notifier.watchdog_s:
            self._spawn(self._watchdog_loop(self.notifier.watchdog_s), "watchdog")
        # Last, so that they are the lines a newcomer reads: what to do now.
        for line in await asyncio.to_thread(firstrun.ready_lines, settings):
            log.info("%s", line)

    def _report_missing_models(self) -> None:
        installed = read_manifest(self.settings.paths.models_dir)
        if not installed:
            log.warning(
                "no models are installed: run `nstd models pull` (jobs fail until then; offline: "
                "`nstd models pull --mirror URL` or `nstd models import NAME FILE`)"
            )
        # A missing vgg19 alone is reported with the last start-up lines (firstrun.ready_lines): on a CPU
        # it is left out on purpose.

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stop_event.is_set():
            return
        error = task.exception()
        if error is not None:
            # Without its worker (or bot, or watcher) the daemon cannot do its job: stop, and say so in
            # the exit status, so that systemd's Restart=on-failure starts it again.
            log.error(
                "%s stopped: %s: %s; exiting with status %d so that nstd is restarted",
                task.get_name(),
                type(error).__name__,
                error,
                EXIT_FATAL,
            )
            self.exit_code = EXIT_FATAL
            self.stop_event.set()

    def on_signal(self, signum: int) -> None:
        """SIGTERM or SIGINT. The first lets a running job finish within the grace period; a second stops
        at once, the running job left queued for the next start."""
        self._signals += 1
        name = signal.Signals(signum).name
        running = self.queue.running_job_id if self.queue is not None else None
        if self._signals == 1:
            if running is None:
                log.info("%s: shutting down", name)
            else:
                log.warning(
                    "%s: finishing job %s (up to %.0f s), press Ctrl-C again to stop now (it stays queued)",
                    name,
                    running,
                    self.settings.daemon.grace_period_s,
                )
            self.stop_event.set()
        elif self._signals == 2:
            log.warning("%s again: stopping now" + (f"; job {running} stays queued" if running else ""), name)
            self.hurry()
        else:
            log.info("%s: already stopping", name)

    def hurry(self) -> None:
        """Stop now: the running job is cancelled and re-queued, its engine process ended (a CycleGAN run
        cannot be interrupted otherwise), and what is left of the shutdown gets HURRY_S."""
        self.stop_event.set()
        hurried = time.monotonic() + HURRY_S
        self._deadline = hurried if self._deadline is None else min(self._deadline, hurried)
        if self.queue is not None:
            self.queue.stop_now()
        self._abort_engines()

    def _abort_engines(self) -> None:
        """End the engine process now (a running job is then cancelled and queued again)."""
        abort = getattr(self._runner, "abort", None)
        if abort is not None:
            abort()

    def status_line(self) -> str:
        assert self.queue is not None
        pending = self.queue.pending_count()
        running = self.queue.running_job_id
        line = f"{pending} job(s) queued or running" + (f"; running job {running}" if running else "")
        # A cluster runner that cannot reach its engines says why (the jobs wait queued meanwhile).
        problem = getattr(self._runner, "problem", "")
        return f"{line}; waiting for the cluster: {problem}" if problem else line

    async def _status_loop(self) -> None:
        last = ""
        while True:
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line
            await asyncio.sleep(2)

    async def _watchdog_loop(self, interval_s: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s)

    async def _sweep_loop(self) -> None:
        days = self.settings.store.retention_days
        if days <= 0:
            return
        while True:
            try:
                assert self.queue is not None
                await self.queue.sweep_expired(days * 86400)
                # Objects whose job row is gone (a crash between the two deletes) age out here.
                await asyncio.to_thread(
                    expire, self.queue.store, self.queue.bucket, "jobs/", timedelta(days=days)
                )
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def serve(self) -> int:
        """Run until stopped; the exit status: 0, or EXIT_FATAL when a background task died."""
        await self.start()
        self.notifier.ready(self.status_line())
        log.info("nstd is running (%s)", self.status_line())
        await self.stop_event.wait()
        await self.shutdown()
        return self.exit_code

    async def shutdown(self) -> None:
        """Stop everything within daemon.grace_period_s + SHUTDOWN_MARGIN_S, however long the queue: the
        running job finishes or is re-queued, the queued ones stay for the next start."""
        started = time.monotonic()
        grace = self.settings.daemon.grace_period_s
        overall = started + grace + SHUTDOWN_MARGIN_S
        self._deadline = overall if self._deadline is None else min(self._deadline, overall)
        self.notifier.stopping()
        log.info("shutting down")
        # Stop intake first, so nothing new arrives while the running job finishes.
        if self.queue is not None:
            self.queue.stop_intake()
        if self.watcher is not None:
            await self._bounded(self.watcher.stop(), "the watched folder")
        if self.queue is not None:
            # The queue waits up to `grace` for the running job, then cancels it (a CycleGAN run by ending
            # its engine process, an NST job at its next step) and queues it again, then gives deliveries
            # in flight what time is left. A job still running at the deadline has its process ended.
            await self._bounded(
                self.queue.shutdown(grace),
                "the job queue",
                reserve_s=CLOSE_RESERVE_S,
                late=self._abort_engines,
            )
        for task in self._tasks:
            task.cancel()
        await self._bounded(asyncio.gather(*self._tasks, return_exceptions=True), "the background tasks")
        close_runner = getattr(self._runner, "close", None)
        closed = close_runner is None or await self._bounded(asyncio.to_thread(close_runner), "the engines")
        if not closed:
            self._abort_engines()  # the interpreter's exit would wait for the thread that stops them
        if self.bot is not None:
            # Stopped after the queue, so a job finishing in the grace period can still be delivered;
            # meanwhile new requests are answered "shutting down".
            try:
                await self._bounded(self.bot.stop(), "telegram", CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("telegram: unclean stop: %s", exc)
        log.info("stopped in %.1f s", time.monotonic() - started)

    async def _bounded(
        self,
        step: Awaitable[Any],
        what: str,
        limit_s: float | None = None,
        reserve_s: float = 0.0,
        late: Callable[[], None] | None = None,
    ) -> bool:
        """Await one step of the shutdown until the deadline less `reserve_s` (a second signal brings the
        deadline forward while it waits). A step still running then gets `late()` and ABORT_WAIT_S more,
        if `late` is given, and is then cancelled; the shutdown goes on. Each step gets a moment even past
        the deadline, to end if it can. True if it ended."""
        task = asyncio.ensure_future(step)
        end = time.monotonic() + limit_s if limit_s is not None else None
        first = True
        while not task.done():
            assert self._deadline is not None
            deadline = self._deadline - reserve_s if end is None else min(end, self._deadline - reserve_s)
            remaining = deadline - time.monotonic()
            if remaining <= 0 and late is not None:
                log.warning("%s did not stop in time; ending the engine process", what)
                late()
                late, end = None, time.monotonic() + ABORT_WAIT_S
                reserve_s = 0.0
                continue
            if remaining <= 0 and not first:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                log.warning("stopped waiting for %s", what)
                return False
            first = False
            await asyncio.wait({task}, timeout=min(max(remaining, 0.05), 0.1))
        task.result()  # its error, if any, is the caller's
        return True


async def serve(settings: Settings, runner: Runner | None = None) -> int:
    daemon = Daemon(settings, runner)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.on_signal, signum)
    try:
        return await daemon.serve()
    except NstdError:
        await daemon.shutdown()
        raise


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT (a second one stops at once); startup problems surface as
    one-line NstdErrors. The exit status is non-zero when a background task died."""
    code = asyncio.run(serve(settings))
    if settings.cluster.backend == "ray":
        # Ray's driver library can abort (SIGABRT) in the interpreter's teardown after an orderly
        # ray.shutdown(), when a thread of its own (Serve's handle routers) still calls into the shut-down
        # core worker: seen once in CI, as exit -6 on SIGTERM. Everything is saved and closed by now, so
        # leave without that teardown, with the status the shutdown decided, as Ray's own workers do.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
