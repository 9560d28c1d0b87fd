"""Durable jobs: SQLite rows first, a bounded queue, one model worker, delivery back to each source.

The database is the queue: the worker always takes the oldest queued row, so a restart resumes in the
original order without any in-memory state to rebuild. The runner is called from a worker thread (the
daemon's runner passes the job on to its engine process). SQLite writes go through `JobWriter`'s thread
and store I/O through `asyncio.to_thread`; no lock is held across either, and the event loop waits on
neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import sqlite_utils

from nst_daemon import db as database
from nst_daemon import imaging, job_rows
from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled, ClusterUnavailable, DiskFull, NstdError, is_disk_full
from nst_daemon.job_model import (
    ACTIVE_STATES,
    ACTIVE_WHERE,
    DELIVERY_STATES,
    ENGINES,
    FINAL_STATES,
    FINAL_WHERE,
    SOURCES,
    STORED_WHERE,
    UNDELIVERED_STATES,
    DatabaseBusy,
    Deliverer,
    Job,
    JobRequest,
    Listener,
    PermanentDeliveryError,
    ProgressFn,
    QueueFull,
    Runner,
    RunResult,
    UserBusy,
    count_active,
    fetch_jobs,
    job_prefix,
)
from nst_daemon.job_rows import MAX_INTERRUPTIONS
from nst_daemon.job_writer import JobWriter
from nst_daemon.store import get_bytes

__all__ = [
    "ACTIVE_STATES",
    "ACTIVE_WHERE",
    "DELIVERY_STATES",
    "ENGINES",
    "FINAL_STATES",
    "FINAL_WHERE",
    "MAX_INTERRUPTIONS",
    "SOURCES",
    "TRY_LATER",
    "UNDELIVERED_STATES",
    "DatabaseBusy",
    "Deliverer",
    "Job",
    "JobQueue",
    "JobRequest",
    "Listener",
    "PermanentDeliveryError",
    "ProgressFn",
    "QueueFull",
    "RunResult",
    "Runner",
    "UserBusy",
    "count_active",
    "fetch_jobs",
    "job_prefix",
]

log = logging.getLogger(__name__)

# Refusals that say nothing about the request: a source that can keep it (the watched folder) tries again.
TRY_LATER = (QueueFull, DiskFull, DatabaseBusy)

# Engine crashes a job may cause before it fails; a daemon crash is not the job's doing and not counted.
MAX_ATTEMPTS = 3
# After an out-of-memory kill the job runs once more at this fraction of the size it ran at.
OOM_SHRINK = 0.75
OOM_MIN_SIDE = 64
PROGRESS_INTERVAL_S = 0.5
REDELIVERY_DELAYS_S = (5, 15, 60, 300)
MAX_DELIVERY_ATTEMPTS = 100
DELIVERY_GRACE_S = 5.0
# The intake check decodes JPEGs at this fraction of their size (1/64 of the pixels); other formats are
# checked from their header only (`imaging.check_image`).
INTAKE_SCALE_DOWN = 8
# While the store is out of space, the worker tries the write it needs again after these waits (the last
# repeating): it pauses instead of stopping, and goes on by itself once space is freed.
DISK_FULL_WAITS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class JobQueue:
    def __init__(
        self, db: sqlite_utils.Database, store: Any, bucket: str, settings: Settings, runner: Runner
    ) -> None:
        self.db = db
        self.store = store
        self.bucket = bucket
        self.settings = settings
        self.runner = runner
        self._wakeup = asyncio.Event()
        self._listeners: list[Listener] = []
        self._preview_listeners: list[Callable[[int, bytes], None]] = []
        self._deliverers: dict[str, Deliverer] = {}
        self._running: tuple[int, threading.Event] | None = None
        self._stopping = False
        self._accepting = True
        self._last_used = time.monotonic()
        self._write = JobWriter(database.file_of(db.conn))
        self._worker_idle = asyncio.Event()
        self._worker_idle.set()
        self._background: set[asyncio.Future[None]] = set()
        self._delivering: set[int] = set()
        self.disk_full = False  # the worker is waiting for space

    # --- reading ---

    def _rows(self, where: str, args: list[Any] | None = None, suffix: str = "") -> list[dict[str, Any]]:
        return fetch_jobs(self.db.conn, where, args, suffix)

    def get(self, job_id: int) -> Job | None:
        rows = self._rows(f"id = ? and {STORED_WHERE}", [job_id])
        return Job.from_row(rows[0]) if rows else None

    def active_jobs(self, owner: str | None = None) -> list[Job]:
        where, args = f"{ACTIVE_WHERE} and {STORED_WHERE}", []
        if owner is not None:
            where += " and owner = ?"
            args.append(owner)
        return [Job.from_row(row) for row in self._rows(where, args, "order by id")]

    def recent_jobs(self, owner: str, limit: int = 5) -> list[Job]:
        rows = self._rows(f"owner = ? and {STORED_WHERE}", [owner, limit], "order by id desc limit ?")
        return [Job.from_row(row) for row in rows]

    def position(self, job_id: int) -> tuple[int, int] | None:
        """1-based place of a job among active jobs (the running one first), and how many there are."""
        ids = [job.id for job in self.active_jobs()]
        return (ids.index(job_id) + 1, len(ids)) if job_id in ids else None

    def pending_count(self) -> int:
        return count_active(self.db.conn)

    @property
    def running_job_id(self) -> int | None:
        return self._running[0] if self._running else None

    # --- wiring ---

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_preview_listener(self, listener: Callable[[int, bytes], None]) -> None:
        """Called on the loop with (job id, small JPEG) whenever a running job's engine sends a preview."""
        self._preview_listeners.append(listener)

    def _tell_preview(self, job_id: int, preview: bytes) -> None:
        for listener in self._preview_listeners:
            try:
                listener(job_id, preview)
            except Exception:
                log.exception("preview listener failed for job %s", job_id)

    def set_deliverer(self, source: str, deliverer: Deliverer) -> None:
        self._deliverers[source] = deliverer

    # --- submitting and cancelling ---

    async def submit(self, request: JobRequest) -> Job:
        """Validate, store the inputs, write the row; only then may the caller acknowledge the request."""
        if not self._accepting:
            raise NstdError("nstd is shutting down; try again in a minute")
        if request.source not in SOURCES or request.engine not in ENGINES:
            raise ValueError(f"bad job request: source={request.source!r} engine={request.engine!r}")
        if request.engine in ("nst", "adain") and not request.style_images:
            raise NstdError("multi-style NST needs at least one style image")
        self._check_capacity(request.owner, self.db.conn)  # a cheap early refusal; _reserve decides
        infos = await asyncio.to_thread(self._check_inputs, request)
        job = await self._insert(request, infos)
        log.info(
            "job %s queued: %s %s from %s %r", job.id, job.engine, job.style_label, job.source, job.owner
        )
        self._wakeup.set()
        await self._notify(job)
        return job

    def _check_capacity(self, owner: str, conn: sqlite3.Connection) -> None:
        if count_active(conn) >= self.settings.queue.max_pending:
            raise QueueFull(self.settings.queue.max_pending)
        if count_active(conn, owner) >= self.settings.queue.per_user:
            raise UserBusy(self.settings.queue.per_user)

    def _check_inputs(self, request: JobRequest) -> list[imaging.ImageInfo]:
        """Refuse bad input before a job exists, from each image's header: the daemon's process never
        holds a photo's pixels (a 70 KB WebP of 40 megapixels took 1 GB to decode). The images are stored
        as sent and decoded by the engine process, which refuses what only a decode can find."""
        limits = self.settings.images.limits
        return [
            imaging.check_job_image(data, index, **limits, jpeg_scale_down=INTAKE_SCALE_DOWN)
            for index, data in enumerate([request.content, *request.style_images])
        ]

    async def _insert(self, request: JobRequest, infos: list[imaging.ImageInfo]) -> Job:
        """Reserve the row (its id names the objects), store the inputs with no lock held, then give the
        row its input keys: only then does the job exist for the worker and for readers. A crash before
        that leaves a row without keys, which `recover` removes; no one was told of it."""
        job_id = await self._write(partial(self._reserve, request))
        prefix = job_prefix(job_id)
        names = ["content"] + [f"style-{n}" for n in range(1, len(infos))]
        keys = [f"{prefix}{name}.{info.extension}" for name, info in zip(names, infos, strict=True)]
        images = [request.content, *request.style_images]
        try:
            for key, data, info in zip(keys, images, infos, strict=True):
                put = partial(self.store.put_object, Bucket=self.bucket, Key=key, Body=data)
                await asyncio.to_thread(put, ContentType=info.content_type)
            return await self._write(partial(job_rows.set_input_keys, job_id, keys))
        except BaseException as exc:
            # Nothing was acknowledged: take the row and whatever was stored back, then refuse.
            await asyncio.shield(self._discard_intake(job_id))
            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                raise DiskFull(str(exc)) from exc
            raise

    def _reserve(self, request: JobRequest, conn: sqlite3.Connection) -> int:
        # In the writer's transaction: two submissions racing for the last slot must not both win.
        self._check_capacity(request.owner, conn)
        now = time.time()
        row = {
            "source": request.source,
            "owner": request.owner,
            "engine": request.engine,
            "styles": json.dumps(request.styles),
            "params": json.dumps(request.params),
            "state": "queued",
            "progress": 0.0,
            "attempts": 0,
            "delivery": "pending",
            "reply": json.dumps(request.reply),
            "created_at": now,
            "updated_at": now,
        }
        columns = ", ".join(f"[{name}]" for name in row)
        marks = ", ".join("?" * len(row))
        return conn.execute(f"insert into jobs ({columns}) values ({marks})", list(row.values())).lastrowid

    async def _discard_intake(self, job_id: int) -> None:
        try:
            await asyncio.to_thread(self._delete_objects, job_prefix(job_id))
        except Exception as exc:  # the row goes anyway; the retention sweep never sees these objects
            log.warning("job %s: could not remove the inputs of a refused intake: %s", job_id, exc)
        try:
            await self._write(partial(job_rows.delete_row, job_id))
        except Exception as exc:  # the caller's own error matters more; `recover` removes the row later
            log.warning("job %s: could not remove the row of a refused intake: %s", job_id, exc)

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job at once, or ask the running one to stop; False when it is already final."""
        job = self.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return False
        if self._running and self._running[0] == job_id:
            self._running[1].set()
            log.info("job %s: cancellation requested", job_id)
            return True
        updated = await self._update(
            job_id, {"state": "cancelled", "finished_at": time.time()}, only_if_state="queued"
        )
        if updated:
            await self._finish(updated)
        return updated is not None

    # --- the worker ---

    async def recover(self) -> None:
        """At start: re-queue interrupted jobs (a daemon crash is not their fault, so their attempts stay),
        drop intakes that never finished, and hand back deliveries left mid-send."""
        orphans, requeued, failed, resent = await self._write(job_rows.recover_rows)
        for job_id in orphans:
            await asyncio.to_thread(self._delete_objects, job_prefix(job_id))
            log.info("job %s: intake was interrupted before it was acknowledged; removed", job_id)
        for job_id, interruptions in requeued:
            log.info("job %s was interrupted (%d times); queued again", job_id, interruptions)
        for job_id in failed:
            log.warning("job %s failed: interrupted by %d daemon restarts", job_id, MAX_INTERRUPTIONS)
            job = self.get(job_id)
            if job:
                await self._write_report(job, {"error": job.error, "attempts": job.attempts})
        for job_id in resent:
            # Crashed between the source's answer and the record of it: sending again may duplicate the
            # result, not sending may lose it. A duplicate is the lesser harm (see _deliver).
            log.warning("job %s: delivery was interrupted mid-send; sending again (may duplicate)", job_id)
        self._wakeup.set()

    async def run_worker(self) -> None:
        while not self._stopping:
            try:
                # Shutting down: the running job may finish, no other one starts.
                ready = self._accepting and await self._runner_ready()
                job = await self._write(job_rows.claim_next) if ready else None
            except (DatabaseBusy, DiskFull) as exc:  # neither is the end of the daemon: wait it out
                log.warning("the worker cannot take the next job (%s); trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=5)
                continue
            if job is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=5)
                continue
            self._worker_idle.clear()
            try:
                await self._run_one(job)
            finally:
                self._running = None
                self._last_used = time.monotonic()
                self._worker_idle.set()

    async def _runner_ready(self) -> bool:
        """A runner whose engines run on a cluster may not reach them: its jobs then wait queued."""
        ready = getattr(self.runner, "ready", None)
        return ready is None or await asyncio.to_thread(ready)

    async def _run_one(self, job: Job) -> None:
        cancel = threading.Event()
        self._running = (job.id, cancel)
        log.info("job %s started (attempt %d)", job.id, job.attempts + 1)
        await self._notify(job)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        last_sent = [0.0]

        def progress(fraction: float, preview: bytes | None = None) -> None:
            # Called from the engine thread; throttled so the loop and the DB see a few updates a second.
            if preview is not None:
                # Already rare (one every few seconds, from the engine); kept in memory, never in the DB.
                loop.call_soon_threadsafe(self._tell_preview, job.id, preview)
            now = time.monotonic()
            if fraction < 1.0 and now - last_sent[0] < PROGRESS_INTERVAL_S:
                return
            last_sent[0] = now
            loop.call_soon_threadsafe(self._schedule_progress, job.id, fraction)

        try:
            result = await asyncio.to_thread(self._read_and_run, job, progress, cancel)
        except Cancelled:
            if self._stopping:
                # Shut down mid-job: leave it queued so the next start runs it again.
                await self._update(job.id, {"state": "queued", "progress": 0.0})
                log.info("job %s interrupted by shutdown; it will run again at the next start", job.id)
                return
            done = await self._update(job.id, {"state": "cancelled", "finished_at": time.time()})
            log.info("job %s cancelled", job.id)
            await self._finish(done, background=True)
            await self._write_report(done, {"error": "cancelled"})
            return
        except ClusterUnavailable as exc:
            # Not the job's fault: it waits queued, its attempts unchanged, until the cluster is back.
            log.warning("job %s: %s; it stays queued", job.id, exc)
            await self._update(job.id, {"state": "queued", "progress": 0.0})
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
        seconds = time.monotonic() - started
        output_key = f"{job.prefix}result.jpg"
        data = await asyncio.to_thread(result.encoded)
        stored = result.stored_key == output_key
        if not stored and not await self._put_waiting(output_key, data, "image/jpeg"):
            # Shut down while the disk was full: the job runs again at the next start.
            await self._update(job.id, {"state": "queued", "progress": 0.0})
            return
        report = {**result.report, "seconds": round(seconds, 3)}
        done = await self._update(
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
        await self._finish(done, data, background=True)
        await self._write_report(done, report)

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
        queued = await self._update(job.id, values)
        if queued:
            await self._notify(queued)

    def _working_side(self, job: Job) -> int:
        """The size the job ran at: its own `max_side`, else its engine's setting, as the runner reads it."""
        engine = self.settings.cyclegan if job.engine == "cyclegan" else self.settings.nst
        return int(job.params.get("max_side") or engine.max_side)

    def _schedule_progress(self, job_id: int, fraction: float) -> None:
        self._spawn(self._progress(job_id, fraction))

    async def _progress(self, job_id: int, fraction: float) -> None:
        job = await self._update(job_id, {"progress": max(0.0, min(1.0, fraction))}, only_if_state="running")
        # Written in order with the final state, but told only while it is still news.
        if job and self.running_job_id == job_id:
            await self._notify(job)

    def _read_and_run(self, job: Job, progress: ProgressFn, cancel: threading.Event) -> RunResult:
        # One trip to a worker thread for both: each trip waits for the loop's thread to let go of the GIL.
        if getattr(self.runner, "reads_store", False):  # its engines read the inputs by key themselves
            return self.runner.run(job, b"", [], progress, cancel)
        content, *styles = [self._get_bytes(key) for key in job.input_keys]
        return self.runner.run(job, content, styles, progress, cancel)

    def _get_bytes(self, key: str) -> bytes:
        return get_bytes(self.store, self.bucket, key)

    async def _put_waiting(self, key: str, data: bytes, content_type: str) -> bool:
        """Store an object the worker must not lose; while the disk is full, wait and try again (the
        worker pauses, the daemon runs on). False when shutting down before it could be stored."""
        waits = iter(DISK_FULL_WAITS_S)
        wait = DISK_FULL_WAITS_S[0]
        while True:
            try:
                await asyncio.to_thread(
                    self.store.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
                )
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                if not self.disk_full:
                    log.error("the store is out of disk space; the worker waits for space (%s)", key)
                    self.disk_full = True
                if self._stopping:
                    return False
                wait = next(waits, wait)
                # The wakeup ends the wait early: shutdown sets it, and so does a new job (worth a try).
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                continue
            if self.disk_full:
                log.info("disk space is back; the worker goes on")
                self.disk_full = False
            return True

    async def _fail(self, job: Job, message: str, trace: str, *, attempts: int | None = None) -> None:
        values: dict[str, Any] = {"state": "failed", "error": message, "finished_at": time.time()}
        if attempts is not None:
            values["attempts"] = attempts
        failed = await self._update(job.id, values)
        log.warning("job %s failed: %s", job.id, message)
        await self._finish(failed, background=True)
        await self._write_report(failed, {"error": message, "traceback": trace})

    async def _write_report(self, job: Job | None, extra: dict[str, Any]) -> None:
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

    # --- delivery ---

    async def _finish(
        self, job: Job | None, result: bytes | None = None, *, background: bool = False
    ) -> None:
        if job is None:
            return
        await self._notify(job)
        if not background:
            await self._deliver(job, result)
            return
        # The worker hands delivery to a task: a slow Telegram (429 waits, an outage) must not hold up
        # the next job on the GPU.
        self._spawn(self._deliver(job, result))

    async def _deliver(self, job: Job, result: bytes | None = None) -> None:
        """Exactly once, short of a crash in one window. The delivery is claimed in the database first
        (pending -> sending, only where still pending at the attempts this caller saw), so two callers
        (the worker's and a redelivery pass working from an older read) cannot both send it. The one
        window left is between the source's answer and the commit of "delivered": a crash there leaves
        the row "sending", and `recover` sends it again (a possible duplicate, never a loss)."""
        deliverer = self._deliverers.get(job.source)
        if deliverer is None or job.delivery != "pending" or job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            claimed = await self._write(partial(job_rows.claim_delivery, job.id, job.delivery_attempts))
            if claimed is None:
                return  # delivered, failed or being sent meanwhile
            await self._send(deliverer, claimed, result)
        finally:
            self._delivering.discard(job.id)

    async def _send(self, deliverer: Deliverer, job: Job, result: bytes | None) -> None:
        attempts = job.delivery_attempts + 1
        try:
            if result is None and job.state == "done" and job.output_key:
                result = await asyncio.to_thread(self._get_bytes, job.output_key)
            await deliverer(job, result)
        except asyncio.CancelledError:
            # Shut down mid-send: whether it arrived is unknown, so it is sent again at the next start.
            await asyncio.shield(self._update(job.id, {"delivery": "pending"}))
            raise
        except PermanentDeliveryError as exc:
            await self._update(job.id, {"delivery": "failed", "delivery_attempts": attempts})
            log.warning("job %s: delivery failed for good: %s", job.id, exc)
        except Exception as exc:
            state = "failed" if attempts >= MAX_DELIVERY_ATTEMPTS else "pending"
            await self._update(job.id, {"delivery": state, "delivery_attempts": attempts})
            log.warning("job %s: delivery to %s failed (attempt %d): %s", job.id, job.source, attempts, exc)
        else:
            await self._update(job.id, {"delivery": "delivered", "delivery_attempts": attempts})

    async def redeliver_pending(self) -> int:
        """Retry finished jobs whose result has not reached their source yet, with backoff per job.

        The rows read here may be stale by the time each turn comes (an earlier delivery can wait through
        minutes of flood control); `_deliver`'s claim re-checks each one in the database before sending."""
        now = time.time()
        count = 0
        sources = list(self._deliverers)
        if not sources:
            return 0
        marks = ",".join("?" * len(sources))
        # Read every row before the first await: an open cursor would pin a stale read snapshot on the
        # shared connection.
        rows = self._rows(
            f"{FINAL_WHERE} and delivery = 'pending' and source in ({marks})",
            sources,
            "order by id",
        )
        for row in rows:
            job = Job.from_row(row)
            delay = REDELIVERY_DELAYS_S[min(job.delivery_attempts - 1, len(REDELIVERY_DELAYS_S) - 1)]
            if job.delivery_attempts and now - (row["updated_at"] or 0) < delay:
                continue
            await self._deliver(job)
            count += 1
        return count

    async def redelivery_loop(self, interval_s: float = 5.0) -> None:
        while not self._stopping:
            try:
                await self.redeliver_pending()
            except Exception:
                log.exception("redelivery pass failed")
            await asyncio.sleep(interval_s)

    # --- housekeeping ---

    async def idle_unload_loop(self, interval_s: float = 10.0) -> None:
        idle_after = self.settings.models.idle_unload_s
        if idle_after <= 0:
            return
        while not self._stopping:
            await asyncio.sleep(interval_s)
            if self._running is None and time.monotonic() - self._last_used >= idle_after:
                unloaded = await asyncio.to_thread(self.runner.unload_idle, idle_after)
                if unloaded:
                    log.info("unloaded idle models: %s", ", ".join(unloaded))

    async def sweep_expired(self, older_than_s: float) -> int:
        """Delete finished jobs older than the retention period: their objects first, then their rows."""
        cutoff = time.time() - older_than_s
        rows = self._rows(f"{FINAL_WHERE} and created_at < ?", [cutoff])
        for row in rows:
            await asyncio.to_thread(self._delete_objects, job_prefix(row["id"]))
            await self._write(partial(job_rows.delete_row, row["id"]))
        if rows:
            log.info("retention: removed %d jobs older than %.1f days", len(rows), older_than_s / 86400)
        return len(rows)

    def _delete_objects(self, prefix: str) -> None:
        listing = self.store.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
        if keys:
            self.store.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    # --- stopping ---

    def stop_intake(self) -> None:
        self._accepting = False

    def stop_now(self) -> None:
        """Stop without waiting for the running job: it is cancelled and queued again (a second Ctrl-C)."""
        self._accepting = False
        self._stopping = True
        self._wakeup.set()
        if self._running is not None:
            self._running[1].set()

    async def shutdown(self, grace_s: float) -> None:
        """Let a running job finish within the grace period, else cancel it so it is re-queued."""
        self._accepting = False
        if self._running is not None:
            log.info("waiting up to %.0f s for job %s to finish", grace_s, self._running[0])
            try:
                await asyncio.wait_for(self._worker_idle.wait(), timeout=grace_s)
            except TimeoutError:
                self._stopping = True
                self._wakeup.set()
                if self._running is not None:
                    self._running[1].set()
                await self._worker_idle.wait()
        self._stopping = True
        self._wakeup.set()
        if self._background:
            # Deliveries still in flight get a moment; whatever is left is redelivered at the next start.
            _, pending = await asyncio.wait(self._background, timeout=DELIVERY_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:  # each puts its claim back (see _send) before the connection closes
                await asyncio.wait(pending, timeout=DELIVERY_GRACE_S)
        await self._write.close()

    # --- internals ---

    async def record_reply(self, job_id: int, values: dict[str, Any]) -> None:
        """Merge `values` into a job's `reply` JSON: a deliverer noting where the result went (the
        folder's `result_path`, read by `nstd jobs show` and by a redelivery after a crash)."""
        await self._write(partial(job_rows.merge_reply, job_id, values))

    async def _update(
        self, job_id: int, values: dict[str, Any], only_if_state: str | None = None
    ) -> Job | None:
        return await self._write(partial(job_rows.update_row, job_id, values, only_if_state))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify(self, job: Job) -> None:
        for listener in self._listeners:
            try:
                outcome = listener(job)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("job listener failed for job %s", job.id)

    def job_for_intake(self, key: str) -> Job | None:
        """The job a Telegram update's image already became (its `reply.intake`), if any: a replayed
        update must not make a second one (nst_daemon/bot/intake.py). Read only for replays."""
        rows = self._rows(
            "source = 'telegram' and json_extract(reply, '$.intake') = ?", [key], "order by id limit 1"
        )
        return Job.from_row(rows[0]) if rows else None


def _engine_died(exc: BaseException) -> bool:
    # Imported here: engine_process imports this module.
    from nst_daemon.engine_process import EngineProcessDied

    return isinstance(exc, EngineProcessDied)
