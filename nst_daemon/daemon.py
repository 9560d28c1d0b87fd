"""Composition root for `nstd run`: wires the database, store, queue, worker, folder and bot in one loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
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

    async def start(self) -> None:
        settings = self.settings
        db = database.connect(settings.db_path)
        store = open_store(settings)
        if self._runner is None:
            from nst_daemon.engine_process import ProcessRunner

            self._runner = ProcessRunner(settings)
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
            log.error("%s stopped: %s: %s; shutting down", task.get_name(), type(error).__name__, error)
            self.stop_event.set()

    def status_line(self) -> str:
        assert self.queue is not None
        pending = self.queue.pending_count()
        running = self.queue.running_job_id
        return f"{pending} job(s) queued or running" + (f"; running job {running}" if running else "")

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
        await self.start()
        self.notifier.ready(self.status_line())
        log.info("nstd is running (%s)", self.status_line())
        await self.stop_event.wait()
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        started = time.monotonic()
        self.notifier.stopping()
        log.info("shutting down")
        # Stop intake first, so nothing new arrives while the running job finishes.
        if self.queue is not None:
            self.queue.stop_intake()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.queue is not None:
            await self.queue.shutdown(self.settings.daemon.grace_period_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        close_runner = getattr(self._runner, "close", None)
        if close_runner is not None:
            await asyncio.to_thread(close_runner)
        if self.bot is not None:
            # Stopped after the queue, so a job finishing in the grace period can still be delivered;
            # meanwhile new requests are answered "shutting down".
            try:
                await asyncio.wait_for(self.bot.stop(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("telegram: unclean stop: %s", exc)
        log.info("stopped in %.1f s", time.monotonic() - started)


async def serve(settings: Settings, runner: Runner | None = None) -> int:
    daemon = Daemon(settings, runner)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stop_event.set)
    try:
        return await daemon.serve()
    except NstdError:
        await daemon.shutdown()
        raise


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT; startup problems surface as one-line NstdErrors."""
    return asyncio.run(serve(settings))
