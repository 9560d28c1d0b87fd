"""The worker: one job at a time, oldest first, from the job store through the runner to a stored result.

The database is the queue: the worker always claims the oldest queued row, so a restart resumes in the
original order without any in-memory state to rebuild. The runner is called from a worker thread (the
daemon's runner passes the job on to its engine process); progress, cancel, engine crashes and the
out-of-memory retry are handled here, the result's delivery is handed to `Delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import traceback
from typing import Any

from nst_daemon.backoff import PATIENT
from nst_daemon.errors import Cancelled, ClusterUnavailable, DiskFull, NstdError, is_disk_full
from nst_daemon.job_model import FINAL_STATES, DatabaseBusy, Job, ProgressFn, Runner, RunResult
from nst_daemon.jobs.delivery import Delivery
from nst_daemon.jobs.wiring import QueuePart, Shared

log = logging.getLogger(__name__)

# Engine crashes a job may cause before it fails; a daemon crash is not the job's doing and not counted.
MAX_ATTEMPTS = 3
# After an out-of-memory kill the job runs once more at this fraction of the size it ran at.
OOM_SHRINK = 0.75
OOM_MIN_SIDE = 64
PROGRESS_INTERVAL_S = 0.5
# While the store is out of space, the worker tries the write it needs again after these waits: it pauses
# instead of stopping, and goes on by itself once space is freed.
DISK_FULL = PATIENT
# How long the idle worker sleeps between looks at the table when nothing wakes it.
IDLE_POLL_S = 5.0


class Worker(QueuePart):
    def __init__(self, shared: Shared, runner: Runner, delivery: Delivery) -> None:
        super().__init__(shared)
        self.runner = runner
        self.delivery = delivery
        self._running: tuple[int, threading.Event] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.last_used = time.monotonic()
        self.disk_full = False  # waiting for space in the store

    @property
    def running_job_id(self) -> int | None:
        return self._running[0] if self._running else None

    def cancel_running(self, job_id: int | None = None) -> bool:
        """Ask the running job (if it is `job_id`, when given) to stop; False when there is no such job."""
        if self._running is None or (job_id is not None and self._running[0] != job_id):
            return False
        self._running[1].set()
        return True

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job at once, or ask the running one to stop; False when it is already final."""
        job = self.store.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return False
        if self.cancel_running(job_id):
            log.info("job %s: cancellation requested", job_id)
            return True
        updated = await self.store.update(
            job_id, {"state": "cancelled", "finished_at": time.time()}, only_if_state="queued"
        )
        if updated:
            await self.delivery.finish(updated)
        return updated is not None

    async def run(self) -> None:
        while not self.life.stopping:
            try:
                # Shutting down: the running job may finish, no other one starts.
                ready = self.life.accepting and await self._runner_ready()
                job = await self.store.claim_next() if ready else None
            except (DatabaseBusy, DiskFull) as exc:  # neither is the end of the daemon: wait it out
                log.warning("the worker cannot take the next job (%s); trying again", exc)
                await self._nap(IDLE_POLL_S)
                continue
            if job is None:
                self.life.wakeup.clear()
                await self._nap(IDLE_POLL_S)
                continue
            self.idle.clear()
            try:
                await self.run_one(job)
            finally:
                self._running = None
                self.last_used = time.monotonic()
                self.idle.set()

    async def _runner_ready(self) -> bool:
        """A runner whose engines run on a cluster may not reach them: its jobs then wait queued."""
        ready = getattr(self.runner, "ready", None)
        return ready is None or await asyncio.to_thread(ready)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.life.wakeup.wait(), timeout=seconds)

    async def run_one(self, job: Job) -> None:
        cancel = threading.Event()
        self._running = (job.id, cancel)
        log.info("job %s started (attempt %d)", job.id, job.attempts + 1)
        await self.listeners.notify(job)
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(self._read_and_run, job, self._progress_fn(job.id), cancel)
        except Cancelled:
            await self._cancelled(job)
            return
        except ClusterUnavailable as exc:
            # Not the job's fault: it waits queued, its attempts unchanged, until the cluster is back.
            log.warning("job %s: %s; it stays queued", job.id, exc)
            await self.store.update(job.id, {"state": "queued", "progress": 0.0})
            return
        except NstdError as exc:
            if _engine_died(exc):
                await self._engine_died(job, exc, traceback.format_exc())
            else:
                await self._fail(job, exc.message, traceback.format_exc())
            return
        except Exception as exc:  # an engine bug or a driver error: the job fails, the daemon goes on
            log.exception("job %s: engine failed", job.id)
            await self._fail(job, f"the engine failed: {type(exc).__name__}: {exc}", traceback.format_exc())
            return
        await self._done(job, result, time.monotonic() - started)

    def _progress_fn(self, job_id: int) -> ProgressFn:
        loop = asyncio.get_running_loop()
        last_sent = [0.0]

        def progress(fraction: float, preview: bytes | None = None) -> None:
            # Called from the engine thread; throttled so the loop and the DB see a few updates a second.
            if preview is not None:
                # Already rare (one every few seconds, from the engine); kept in memory, never in the DB.
                loop.call_soon_threadsafe(self.listeners.preview, job_id, preview)
            now = time.monotonic()
            if fraction < 1.0 and now - last_sent[0] < PROGRESS_INTERVAL_S:
                return
            last_sent[0] = now
            loop.call_soon_threadsafe(self._schedule_progress, job_id, fraction)

        return progress

    def _schedule_progress(self, job_id: int, fraction: float) -> None:
        self.life.spawn(self._progress(job_id, fraction))

    async def _progress(self, job_id: int, fraction: float) -> None:
        values = {"progress": max(0.0, min(1.0, fraction))}
        job = await self.store.update(job_id, values, only_if_state="running")
        # Written in order with the final state, but told only while it is still news.
        if job and self.running_job_id == job_id:
            await self.listeners.notify(job)

    def _read_and_run(self, job: Job, progress: ProgressFn, cancel: threading.Event) -> RunResult:
        # One trip to a worker thread for both: each trip waits for the loop's thread to let go of the GIL.
        if getattr(self.runner, "reads_store", False):  # its engines read the inputs by key themselves
            return self.runner.run(job, b"", [], progress, cancel)
        content, *styles = [self.objects.get(key) for key in job.input_keys]
        return self.runner.run(job, content, styles, progress, cancel)

    async def _cancelled(self, job: Job) -> None:
        if self.life.stopping:
            # Shut down mid-job: leave it queued so the next start runs it again.
            await self.store.update(job.id, {"state": "queued", "progress": 0.0})
            log.info("job %s interrupted by shutdown; it will run again at the next start", job.id)
            return
        done = await self.store.update(job.id, {"state": "cancelled", "finished_at": time.time()})
        log.info("job %s cancelled", job.id)
        await self.delivery.finish(done, background=True)
        await self.write_report(done, {"error": "cancelled"})

    async def _done(self, job: Job, result: RunResult, seconds: float) -> None:
        output_key = f"{job.prefix}result.jpg"
        data = await asyncio.to_thread(result.encoded)
        stored = result.stored_key == output_key  # a cluster replica stored it already
        if not stored and not await self._put_waiting(output_key, data, "image/jpeg"):
            # Shut down while the disk was full: the job runs again at the next start.
            await self.store.update(job.id, {"state": "queued", "progress": 0.0})
            return
        report = {**result.report, "seconds": round(seconds, 3)}
        done = await self.store.update(
            job.id,
            {
                "state": "done",
                "progress": 1.0,
                "output_key": output_key,
                "finished_at": time.time(),
                "params": json.dumps({**job.params, "device": report.get("device", "")}),
            },
        )
        log.info("job %s done in %.1f s on %s", job.id, seconds, report.get("device", "?"))
        # The report is the record, not the answer: it is written while the result goes out. The worker
        # still waits for it before the next job, so a finished worker has always written its reports.
        await self.delivery.finish(done, data, background=True)
        await self.write_report(done, report)

    async def _engine_died(self, job: Job, exc: NstdError, trace: str) -> None:
        """The engine process died under this job: that counts against it, as a failure of the job's own
        run. It runs again until its attempts are spent; after an out-of-memory kill, once more at a
        smaller size, and not again after a second one."""
        attempts = job.attempts + 1
        side = self._working_side(job)
        if getattr(exc, "oom_suspected", False):
            if job.params.get("oom_retry_from"):
                await self._fail(
                    job, f"{exc.message}; it ran out of memory even at {side} px", trace, attempts=attempts
                )
                return
            smaller = max(OOM_MIN_SIDE, int(side * OOM_SHRINK))
            params = {**job.params, "max_side": smaller, "oom_retry_from": side}
            log.warning("job %s: out of memory at %d px; trying once more at %d px", job.id, side, smaller)
            await self._requeue(job, attempts, params)
            return
        allowed = getattr(self.runner, "max_attempts", MAX_ATTEMPTS)
        if attempts >= allowed:
            message = f"{exc.message} (the engine crashed {attempts} times on this job)"
            await self._fail(job, message, trace, attempts=attempts)
            return
        log.warning("job %s: %s; queued again (attempt %d of %d)", job.id, exc, attempts + 1, allowed)
        await self._requeue(job, attempts, job.params)

    async def _requeue(self, job: Job, attempts: int, params: dict[str, Any]) -> None:
        values = {"state": "queued", "progress": 0.0, "attempts": attempts, "params": json.dumps(params)}
        queued = await self.store.update(job.id, values)
        if queued:
            await self.listeners.notify(queued)

    def _working_side(self, job: Job) -> int:
        """The size the job ran at: its own `max_side`, else its engine's, as the pipeline reads it."""
        from nst_daemon.engines import registry

        return registry.get(job.engine).max_side(self.settings, job.params)

    async def _fail(self, job: Job, message: str, trace: str, *, attempts: int | None = None) -> None:
        values: dict[str, Any] = {"state": "failed", "error": message, "finished_at": time.time()}
        if attempts is not None:
            values["attempts"] = attempts
        failed = await self.store.update(job.id, values)
        log.warning("job %s failed: %s", job.id, message)
        await self.delivery.finish(failed, background=True)
        await self.write_report(failed, {"error": message, "traceback": trace})

    async def write_report(self, job: Job | None, extra: dict[str, Any]) -> None:
        """The job's record next to its objects (`jobs/<id>/report.json`)."""
        if job is None:
            return
        report = {
            "job": job.id,
            "source": job.source,
            "engine": job.engine,
            "styles": job.styles,
            "params": job.params,
            "state": job.state,
            "attempts": job.attempts,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            **extra,
        }
        data = json.dumps(report, indent=2, default=str).encode()
        await self._put_waiting(f"{job.prefix}report.json", data, "application/json")

    async def _put_waiting(self, key: str, data: bytes, content_type: str) -> bool:
        """Store an object the worker must not lose; while the disk is full, wait and try again (the
        worker pauses, the daemon runs on). False when shutting down before it could be stored."""
        waits = DISK_FULL.waits()
        while True:
            try:
                await asyncio.to_thread(self.objects.put, key, data, content_type)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                if not self.disk_full:
                    log.error("the store is out of disk space; the worker waits for space (%s)", key)
                    self.disk_full = True
                if self.life.stopping:
                    return False
                # The wakeup ends the wait early: shutdown sets it, and so does a new job (worth a try).
                self.life.wakeup.clear()
                await self._nap(next(waits))
                continue
            if self.disk_full:
                log.info("disk space is back; the worker goes on")
                self.disk_full = False
            return True


def _engine_died(exc: BaseException) -> bool:
    # Imported here: engine_process imports the jobs package.
    from nst_daemon.engine_process import EngineProcessDied

    return isinstance(exc, EngineProcessDied)
