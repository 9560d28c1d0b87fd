"""Durable jobs: SQLite rows first, a bounded queue, one model worker, delivery back to each source.

`JobQueue` is the one object the daemon, the bot and the watched folder hold. It only wires and delegates;
each concern lives in its own module:

- `store.py` (with `rows.py`, `writer.py`): the job store, the only code that reads or writes the jobs
  table; its writes run on one thread of their own, so the event loop never waits on SQLite.
- `intake.py`: a request checked, its images stored, its row written.
- `worker.py`: one job at a time through the `Runner` (job_model.py), progress, cancel, engine crashes.
- `delivery.py`: a finished job handed back to its source, exactly once, and again while it fails.
- `housekeeping.py`: start-up repairs, the redelivery schedule, idle unload, retention.

No lock is held across store or network I/O: object store calls run in threads, and the table's writes
are awaited on the writer's thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlite_utils

from nst_daemon.config import Settings
from nst_daemon.errors import DiskFull
from nst_daemon.job_model import (
    ACTIVE_STATES,
    DELIVERY_STATES,
    ENGINES,
    FINAL_STATES,
    SOURCES,
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
    job_prefix,
)
from nst_daemon.jobs import delivery
from nst_daemon.jobs.delivery import Delivery
from nst_daemon.jobs.housekeeping import Housekeeping
from nst_daemon.jobs.intake import INTAKE_SCALE_DOWN, Intake
from nst_daemon.jobs.objects import JobObjects
from nst_daemon.jobs.rows import MAX_INTERRUPTIONS
from nst_daemon.jobs.store import JobStore
from nst_daemon.jobs.wiring import Lifecycle, Listeners, PreviewListener, Shared
from nst_daemon.jobs.worker import MAX_ATTEMPTS, Worker

__all__ = [
    "ACTIVE_STATES",
    "DELIVERY_STATES",
    "ENGINES",
    "FINAL_STATES",
    "INTAKE_SCALE_DOWN",
    "MAX_ATTEMPTS",
    "MAX_INTERRUPTIONS",
    "SOURCES",
    "TRY_LATER",
    "UNDELIVERED_STATES",
    "DatabaseBusy",
    "Deliverer",
    "Job",
    "JobQueue",
    "JobRequest",
    "JobStore",
    "Listener",
    "PermanentDeliveryError",
    "ProgressFn",
    "QueueFull",
    "RunResult",
    "Runner",
    "UserBusy",
    "job_prefix",
]

log = logging.getLogger(__name__)

# Refusals that say nothing about the request: a source that can keep it (the watched folder) tries again.
TRY_LATER = (QueueFull, DiskFull, DatabaseBusy)


class JobQueue:
    def __init__(
        self, db: sqlite_utils.Database, store: Any, bucket: str, settings: Settings, runner: Runner
    ) -> None:
        self.db = db
        self.store = store
        self.bucket = bucket
        self.settings = settings
        self.job_store = JobStore(db)
        self.life = Lifecycle()
        self.listeners = Listeners()
        shared = Shared(self.job_store, JobObjects(store, bucket), settings, self.life, self.listeners)
        self.delivery = Delivery(shared)
        self.intake = Intake(shared)
        self.worker = Worker(shared, runner, self.delivery)
        self.housekeeping = Housekeeping(shared, runner, self.worker, self.delivery)

    @property
    def runner(self) -> Runner:
        return self.worker.runner

    @runner.setter
    def runner(self, runner: Runner) -> None:
        """Swapping the runner (tests, benchmarks) swaps it for the parts that call it."""
        self.worker.runner = self.housekeeping.runner = runner

    # --- reading ---

    def get(self, job_id: int) -> Job | None:
        return self.job_store.get(job_id)

    def active_jobs(self, owner: str | None = None) -> list[Job]:
        return self.job_store.active(owner)

    def recent_jobs(self, owner: str, limit: int = 5) -> list[Job]:
        return self.job_store.recent(owner, limit)

    def position(self, job_id: int) -> tuple[int, int] | None:
        """1-based place of a job among active jobs (the running one first), and how many there are."""
        ids = [job.id for job in self.active_jobs()]
        return (ids.index(job_id) + 1, len(ids)) if job_id in ids else None

    def pending_count(self) -> int:
        return self.job_store.count_active()

    def job_for_intake(self, key: str) -> Job | None:
        """The job a Telegram update's image already became (its `reply.intake`), if any: a replayed
        update must not make a second one (nst_daemon/bot/intake.py). Read only for replays."""
        return self.job_store.for_intake(key)

    @property
    def running_job_id(self) -> int | None:
        return self.worker.running_job_id

    @property
    def disk_full(self) -> bool:
        """The worker is waiting for space in the store."""
        return self.worker.disk_full

    # --- wiring ---

    def add_listener(self, listener: Listener) -> None:
        self.listeners.add(listener)

    def add_preview_listener(self, listener: PreviewListener) -> None:
        """Called on the loop with (job id, small JPEG) whenever a running job's engine sends a preview."""
        self.listeners.add_preview(listener)

    def set_deliverer(self, source: str, deliverer: Deliverer) -> None:
        self.delivery.set_deliverer(source, deliverer)

    # --- the lifecycle of jobs ---

    async def submit(self, request: JobRequest) -> Job:
        return await self.intake.submit(request)

    async def cancel(self, job_id: int) -> bool:
        return await self.worker.cancel(job_id)

    async def record_reply(self, job_id: int, values: dict[str, Any]) -> None:
        """Merge `values` into a job's `reply` JSON: a deliverer noting where the result went (the
        folder's `result_path`, read by `nstd jobs show` and by a redelivery after a crash)."""
        await self.job_store.merge_reply(job_id, values)

    async def recover(self) -> None:
        await self.housekeeping.recover()

    async def run_worker(self) -> None:
        await self.worker.run()

    async def redeliver_pending(self) -> int:
        return await self.delivery.redeliver_pending()

    async def redelivery_loop(self, interval_s: float = 5.0) -> None:
        await self.housekeeping.redelivery_loop(interval_s)

    async def idle_unload_loop(self, interval_s: float = 10.0) -> None:
        await self.housekeeping.idle_unload_loop(interval_s)

    async def sweep_expired(self, older_than_s: float) -> int:
        return await self.housekeeping.sweep_expired(older_than_s)

    # --- stopping ---

    @property
    def accepting(self) -> bool:
        """False once the daemon is stopping: no new work should start."""
        return self.life.accepting

    def stop_intake(self) -> None:
        self.life.accepting = False

    def stop_now(self) -> None:
        """Stop without waiting for the running job: it is cancelled and queued again (a second Ctrl-C)."""
        self.life.stop()
        self.worker.cancel_running()

    async def shutdown(self, grace_s: float) -> None:
        """Let a running job finish within the grace period, else cancel it so it is re-queued."""
        self.life.accepting = False
        if self.worker.running_job_id is not None:
            log.info("waiting up to %.0f s for job %s to finish", grace_s, self.worker.running_job_id)
            try:
                await asyncio.wait_for(self.worker.idle.wait(), timeout=grace_s)
            except TimeoutError:
                self.stop_now()
                await self.worker.idle.wait()
        self.life.stop()
        # Deliveries still in flight get a moment; whatever is left is redelivered at the next start.
        await self.life.drain(delivery.DELIVERY_GRACE_S)  # read here, so a test can shorten it
        await self.job_store.close()
