"""Durable jobs: SQLite rows first, a bounded queue, one model worker, delivery back to each source.

The database is the queue: the worker always takes the oldest queued row, so a restart resumes in the
original order without any in-memory state to rebuild. The runner is called from a worker thread (the
daemon's runner passes the job on to its engine process); everything else (store writes included) is
pushed off the event loop with `asyncio.to_thread`.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlite_utils
from PIL import Image

from nst_daemon import db as database
from nst_daemon import imaging
from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.store import get_bytes
from nst_daemon.wording import plural

log = logging.getLogger(__name__)

SOURCES = ("telegram", "folder", "cli")
ENGINES = ("nst", "cyclegan", "adain")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 3
PROGRESS_INTERVAL_S = 0.5
REDELIVERY_DELAYS_S = (5, 15, 60, 300)
MAX_DELIVERY_ATTEMPTS = 100
DELIVERY_GRACE_S = 5.0
# The intake check decodes JPEGs at this fraction of their size: it refuses what a full decode refuses
# in half the time, and a huge upload never takes its full size in the daemon's memory.
INTAKE_SCALE_DOWN = 8


class QueueFull(NstdError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the queue is full ({limit} jobs waiting); try again in a few minutes")


class UserBusy(NstdError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"you already have {limit} job{plural(limit)} waiting or running; "
            "wait for one to finish or cancel it"
        )


class PermanentDeliveryError(NstdError):
    """A delivery that can never succeed (the chat is gone, the folder is unwritable): stop retrying."""


@dataclass(frozen=True)
class Job:
    id: int
    source: str
    owner: str
    engine: str
    styles: list[str]
    params: dict[str, Any]
    state: str
    progress: float
    attempts: int
    error: str | None
    input_keys: list[str]
    output_key: str | None
    delivery: str
    delivery_attempts: int
    reply: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            source=row["source"],
            owner=row["owner"],
            engine=row["engine"],
            styles=json.loads(row["styles"] or "[]"),
            params=json.loads(row["params"] or "{}"),
            state=row["state"],
            progress=row["progress"] or 0.0,
            attempts=row["attempts"] or 0,
            error=row["error"],
            input_keys=json.loads(row["input_keys"] or "[]"),
            output_key=row["output_key"],
            delivery=row["delivery"] or "pending",
            delivery_attempts=row["delivery_attempts"] or 0,
            reply=json.loads(row["reply"] or "{}"),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    @property
    def prefix(self) -> str:
        return job_prefix(self.id)

    @property
    def style_label(self) -> str:
        return (
            self.styles[0] if self.engine == "cyclegan" else f"multi-style NST ({len(self.input_keys) - 1})"
        )


def _state_in(states: tuple[str, ...]) -> str:
    return "state in (" + ", ".join(f"'{state}'" for state in states) + ")"


ACTIVE_WHERE = _state_in(ACTIVE_STATES)
FINAL_WHERE = _state_in(FINAL_STATES)


def fetch_jobs(
    conn: sqlite3.Connection, where: str, args: list[Any] | None = None, suffix: str = ""
) -> list[dict[str, Any]]:
    """Rows of `jobs` as dicts, in one statement on any connection. Not sqlite-utils' `rows_where` or
    `query`: those add a sqlite_master lookup or a savepoint around every read, which once made most of
    the statements a job ran on the event loop."""
    cursor = conn.execute(f"select * from jobs where {where} {suffix}", args or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def count_active(conn: sqlite3.Connection, owner: str | None = None) -> int:
    """Queued and running jobs, all or one owner's (on any connection: the queue uses two)."""
    if owner is None:
        return conn.execute(f"select count(*) from jobs where {ACTIVE_WHERE}").fetchone()[0]
    return conn.execute(f"select count(*) from jobs where owner = ? and {ACTIVE_WHERE}", [owner]).fetchone()[
        0
    ]


def job_prefix(job_id: int) -> str:
    return f"jobs/{job_id}/"


@dataclass
class JobRequest:
    source: str
    owner: str
    engine: str
    content: bytes
    styles: list[str] = field(default_factory=list)  # cyclegan: [style]; nst: unused
    style_images: list[bytes] = field(default_factory=list)  # nst only
    params: dict[str, Any] = field(default_factory=dict)
    reply: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """An engine's output: the image, or (from the engine process) the image already encoded as JPEG."""

    image: Image.Image | None
    report: dict[str, Any]
    jpeg: bytes | None = None

    def encoded(self) -> bytes:
        if self.jpeg is not None:
            return self.jpeg
        assert self.image is not None
        return imaging.encode_image(self.image, "jpeg")


ProgressFn = Callable[[float], None]


class Runner(Protocol):
    """Runs one job's engine. Called in a worker thread; must honour `cancel` and report progress.

    The images come as stored (JPEG bytes, checked at intake): the runner decodes them where it runs,
    which for the daemon is its engine process.
    """

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult: ...

    def unload_idle(self, idle_s: float) -> list[str]: ...


Listener = Callable[[Job], Awaitable[None] | None]
# Hands a finished job back to where it came from; result is None for failed or cancelled jobs.
Deliverer = Callable[[Job, bytes | None], Awaitable[None]]


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
        self._deliverers: dict[str, Deliverer] = {}
        self._running: tuple[int, threading.Event] | None = None
        self._stopping = False
        self._accepting = True
        self._last_used = time.monotonic()
        self._db_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        self._worker_idle = asyncio.Event()
        self._worker_idle.set()
        self._background: set[asyncio.Future[None]] = set()
        self._delivering: set[int] = set()

    # --- reading ---

    def _rows(self, where: str, args: list[Any] | None = None, suffix: str = "") -> list[dict[str, Any]]:
        return fetch_jobs(self.db.conn, where, args, suffix)

    def get(self, job_id: int) -> Job | None:
        rows = self._rows("id = ?", [job_id])
        return Job.from_row(rows[0]) if rows else None

    def active_jobs(self, owner: str | None = None) -> list[Job]:
        where, args = ACTIVE_WHERE, []
        if owner is not None:
            where += " and owner = ?"
            args.append(owner)
        return [Job.from_row(row) for row in self._rows(where, args, "order by id")]

    def recent_jobs(self, owner: str, limit: int = 5) -> list[Job]:
        rows = self._rows("owner = ?", [owner, limit], "order by id desc limit ?")
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
        self._check_capacity(request.owner)
        stored = await asyncio.to_thread(self._normalize_inputs, request)
        job = await asyncio.to_thread(self._insert, request, stored)
        log.info(
            "job %s queued: %s %s from %s %s", job.id, job.engine, job.style_label, job.source, job.owner
        )
        self._wakeup.set()
        await self._notify(job)
        return job

    def _check_capacity(self, owner: str, conn: sqlite3.Connection | None = None) -> None:
        conn = conn or self.db.conn
        if count_active(conn) >= self.settings.queue.max_pending:
            raise QueueFull(self.settings.queue.max_pending)
        if count_active(conn, owner) >= self.settings.queue.per_user:
            raise UserBusy(self.settings.queue.per_user)

    def _normalize_inputs(self, request: JobRequest) -> list[bytes]:
        """Decode every image now, so bad input is refused before a job exists; return what to store.

        A JPEG that decodes is stored as it came: re-encoding it would cost time and quality, and the
        runner's decode applies its orientation and colour profile anyway. It is checked at a reduced
        scale (`INTAKE_SCALE_DOWN`). Other formats are decoded in full and become JPEGs.
        """
        limits = self.settings.images.limits
        stored = []
        for index, data in enumerate([request.content, *request.style_images]):
            jpeg = imaging.is_jpeg(data)
            scale_down = INTAKE_SCALE_DOWN if jpeg else 1
            image = imaging.load_job_image(data, index, **limits, scale_down=scale_down)
            stored.append(data if jpeg else imaging.encode_image(image, "jpeg"))
        return stored

    def _insert(self, request: JobRequest, images: list[bytes]) -> Job:
        # Runs in a worker thread, so it writes through a connection of its own: on the shared one, a
        # read the loop thread has in progress would pin an old snapshot, and the write would fail at
        # once with "database is locked". BEGIN IMMEDIATE takes the write lock up front, where the busy
        # timeout applies, and makes the capacity re-check and the insert one atomic step.
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
        with self._db_lock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Two submissions racing for the last slot must not both win.
                self._check_capacity(request.owner, conn)
                job_id = conn.execute(
                    f"insert into jobs ({columns}) values ({marks})", list(row.values())
                ).lastrowid
                prefix = job_prefix(job_id)
                keys = [f"{prefix}content.jpg"] + [f"{prefix}style-{n}.jpg" for n in range(1, len(images))]
                for key, data in zip(keys, images, strict=True):
                    self.store.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="image/jpeg")
                conn.execute("update jobs set input_keys = ? where id = ?", [json.dumps(keys), job_id])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Read back on this connection too: the shared one may still be on an older snapshot.
            return Job.from_row(fetch_jobs(conn, "id = ?", [job_id])[0])

    def _writer(self) -> sqlite3.Connection:
        if self._write_conn is None:
            self._write_conn = database.open_connection(database.file_of(self.db.conn), autocommit=True)
        return self._write_conn

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job at once, or ask the running one to stop; False when it is already final."""
        job = self.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return False
        if self._running and self._running[0] == job_id:
            self._running[1].set()
            log.info("job %s: cancellation requested", job_id)
            return True
        updated = self._update(
            job_id, {"state": "cancelled", "finished_at": time.time()}, only_if_state="queued"
        )
        if updated:
            await self._finish(updated)
        return updated is not None

    # --- the worker ---

    async def recover(self) -> None:
        """At start: re-queue interrupted jobs, fail ones that keep crashing, redeliver finished ones."""
        for row in self._rows("state = 'running'", suffix="order by id"):
            attempts = (row["attempts"] or 0) + 1
            if attempts >= MAX_ATTEMPTS:
                job = self._update(
                    row["id"],
                    {
                        "state": "failed",
                        "attempts": attempts,
                        "error": "failed repeatedly",
                        "finished_at": time.time(),
                    },
                )
                log.warning("job %s failed repeatedly (%d interrupted runs)", row["id"], attempts)
                if job:
                    await self._write_report(job, {"error": "failed repeatedly", "attempts": attempts})
            else:
                self._update(row["id"], {"state": "queued", "attempts": attempts, "progress": 0.0})
                log.info("job %s was interrupted; queued again (attempt %d)", row["id"], attempts + 1)
        self._wakeup.set()

    async def run_worker(self) -> None:
        while not self._stopping:
            job = self._claim_next()
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

    def _claim_next(self) -> Job | None:
        rows = self._rows("state = 'queued'", suffix="order by id limit 1")
        if not rows:
            return None
        return self._update(
            rows[0]["id"],
            {"state": "running", "started_at": time.time(), "progress": 0.0},
            only_if_state="queued",
        )

    async def _run_one(self, job: Job) -> None:
        cancel = threading.Event()
        self._running = (job.id, cancel)
        log.info("job %s started (attempt %d)", job.id, job.attempts + 1)
        await self._notify(job)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        last_sent = [0.0]

        def progress(fraction: float) -> None:
            # Called from the engine thread; throttled so the loop and the DB see a few updates a second.
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
                self._update(job.id, {"state": "queued", "progress": 0.0})
                log.info("job %s interrupted by shutdown; it will run again at the next start", job.id)
                return
            done = self._update(job.id, {"state": "cancelled", "finished_at": time.time()})
            log.info("job %s cancelled", job.id)
            await self._finish(done, background=True)
            await self._write_report(done, {"error": "cancelled"})
            return
        except NstdError as exc:
            await self._fail(job, exc.message, traceback.format_exc())
            return
        except Exception as exc:  # an engine bug or a driver error: the job fails, the daemon goes on
            log.exception("job %s: engine failed", job.id)
            await self._fail(job, f"the engine failed: {type(exc).__name__}: {exc}", traceback.format_exc())
            return
        seconds = time.monotonic() - started
        output_key = f"{job.prefix}result.jpg"
        data = await asyncio.to_thread(result.encoded)
        await asyncio.to_thread(
            self.store.put_object, Bucket=self.bucket, Key=output_key, Body=data, ContentType="image/jpeg"
        )
        report = {**result.report, "seconds": round(seconds, 3)}
        done = self._update(
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

    def _schedule_progress(self, job_id: int, fraction: float) -> None:
        job = self._update(job_id, {"progress": max(0.0, min(1.0, fraction))}, only_if_state="running")
        if job:
            task = asyncio.ensure_future(self._notify(job))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _read_and_run(self, job: Job, progress: ProgressFn, cancel: threading.Event) -> RunResult:
        # One trip to a worker thread for both: each trip waits for the loop's thread to let go of the GIL.
        content, *styles = [self._get_bytes(key) for key in job.input_keys]
        return self.runner.run(job, content, styles, progress, cancel)

    def _get_bytes(self, key: str) -> bytes:
        return get_bytes(self.store, self.bucket, key)

    async def _fail(self, job: Job, message: str, trace: str) -> None:
        failed = self._update(job.id, {"state": "failed", "error": message, "finished_at": time.time()})
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
        await asyncio.to_thread(
            self.store.put_object,
            Bucket=self.bucket,
            Key=f"{job.prefix}report.json",
            Body=data,
            ContentType="application/json",
        )

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
        task = asyncio.ensure_future(self._deliver(job, result))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver(self, job: Job, result: bytes | None = None) -> None:
        deliverer = self._deliverers.get(job.source)
        # One delivery per job at a time: the redelivery pass must not resend a result whose first
        # delivery is still under way.
        if deliverer is None or job.delivery != "pending" or job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            if result is None and job.state == "done" and job.output_key:
                result = await asyncio.to_thread(self._get_bytes, job.output_key)
            await deliverer(job, result)
        except PermanentDeliveryError as exc:
            self._update(job.id, {"delivery": "failed", "delivery_attempts": job.delivery_attempts + 1})
            log.warning("job %s: delivery failed for good: %s", job.id, exc)
        except Exception as exc:
            attempts = job.delivery_attempts + 1
            state = "failed" if attempts >= MAX_DELIVERY_ATTEMPTS else "pending"
            self._update(job.id, {"delivery": state, "delivery_attempts": attempts})
            log.warning("job %s: delivery to %s failed (attempt %d): %s", job.id, job.source, attempts, exc)
        else:
            self._update(job.id, {"delivery": "delivered", "delivery_attempts": job.delivery_attempts + 1})
        finally:
            self._delivering.discard(job.id)

    async def redeliver_pending(self) -> int:
        """Retry finished jobs whose result has not reached their source yet, with backoff per job."""
        now = time.time()
        count = 0
        sources = list(self._deliverers)
        if not sources:
            return 0
        marks = ",".join("?" * len(sources))
        # Read every row before the first await: an open cursor would pin a stale read snapshot on the
        # shared connection, and a later write on it fails with "database is locked" (SQLITE_BUSY_SNAPSHOT).
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
            with self._db_lock, self.db.conn:
                self.db.conn.execute("delete from jobs where id = ?", [row["id"]])
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

    async def shutdown(self, grace_s: float) -> None:
        """Let a running job finish within the grace period, else cancel it so it is re-queued."""
        self._accepting = False
        if self._running is not None:
            log.info("waiting up to %.0f s for job %s to finish", grace_s, self._running[0])
            try:
                await asyncio.wait_for(self._worker_idle.wait(), timeout=grace_s)
            except TimeoutError:
                self._stopping = True
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
        with self._db_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None

    # --- internals ---

    def _update(self, job_id: int, values: dict[str, Any], only_if_state: str | None = None) -> Job | None:
        values = {**values, "updated_at": time.time()}
        sets = ", ".join(f"[{key}] = ?" for key in values)
        where, args = "id = ?", [*values.values(), job_id]
        if only_if_state is not None:
            where += " and state = ?"
            args.append(only_if_state)
        with self._db_lock, self.db.conn:
            if self.db.conn.execute(f"update jobs set {sets} where {where}", args).rowcount == 0:
                return None
        return self.get(job_id)

    async def _notify(self, job: Job) -> None:
        for listener in self._listeners:
            try:
                outcome = listener(job)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("job listener failed for job %s", job.id)
