"""What the job queue's parts share: whether it takes new jobs and runs on (`Lifecycle`), who is told of
each job's change (`Listeners`), and the store, objects and settings (`QueuePart`, the base of the
intake, worker, delivery and housekeeping)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nst_daemon.config import Settings
from nst_daemon.job_model import Job, Listener
from nst_daemon.jobs.objects import JobObjects
from nst_daemon.jobs.store import JobStore

log = logging.getLogger(__name__)

PreviewListener = Callable[[int, bytes], None]


class Lifecycle:
    """Set only by the queue's stop calls. `wakeup` ends the worker's and the disk-full waits early: a new
    job sets it, and so does a stop. `background` holds the tasks the parts start on the side (deliveries,
    progress writes), which shutdown lets finish for a moment."""

    def __init__(self) -> None:
        self.accepting = True  # new jobs are taken, and the worker claims the next one
        self.stopping = False  # the loops end; a running job is cancelled and queued again
        self.wakeup = asyncio.Event()
        self.background: set[asyncio.Future[None]] = set()

    def stop(self) -> None:
        self.accepting = False
        self.stopping = True
        self.wakeup.set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def drain(self, grace_s: float) -> None:
        """Give the background tasks `grace_s`, then cancel what is left and give each as long again to
        clean up (a delivery puts its claim back) before the database closes."""
        if not self.background:
            return
        _, pending = await asyncio.wait(self.background, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace_s)


class Listeners:
    def __init__(self) -> None:
        self._jobs: list[Listener] = []
        self._previews: list[PreviewListener] = []

    def add(self, listener: Listener) -> None:
        self._jobs.append(listener)

    def add_preview(self, listener: PreviewListener) -> None:
        self._previews.append(listener)

    async def notify(self, job: Job) -> None:
        """Tell every listener of `job`'s new state; one that fails is logged and the rest are told."""
        for listener in self._jobs:
            try:
                outcome = listener(job)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("job listener failed for job %s", job.id)

    def preview(self, job_id: int, preview: bytes) -> None:
        """On the loop: a running job's engine sent a small JPEG."""
        for listener in self._previews:
            try:
                listener(job_id, preview)
            except Exception:
                log.exception("preview listener failed for job %s", job_id)


@dataclass(frozen=True)
class Shared:
    store: JobStore
    objects: JobObjects
    settings: Settings
    life: Lifecycle
    listeners: Listeners


class QueuePart:
    """One concern of the queue, with what every concern uses."""

    def __init__(self, shared: Shared) -> None:
        self.store = shared.store
        self.objects = shared.objects
        self.settings = shared.settings
        self.life = shared.life
        self.listeners = shared.listeners
