"""Housekeeping: the start-up repairs, the redelivery schedule, idle model unloading and retention."""

from __future__ import annotations

import asyncio
import logging
import time

from nst_daemon.job_model import Runner
from nst_daemon.jobs.delivery import Delivery
from nst_daemon.jobs.rows import MAX_INTERRUPTIONS
from nst_daemon.jobs.wiring import QueuePart, Shared
from nst_daemon.jobs.worker import Worker

log = logging.getLogger(__name__)


class Housekeeping(QueuePart):
    def __init__(self, shared: Shared, runner: Runner, worker: Worker, delivery: Delivery) -> None:
        super().__init__(shared)
        self.runner = runner
        self.worker = worker
        self.delivery = delivery

    async def recover(self) -> None:
        """At start: re-queue interrupted jobs (a daemon crash is not their fault, so their attempts stay),
        drop intakes that never finished, and hand back deliveries left mid-send."""
        orphans, requeued, failed, resent = await self.store.recover()
        for job_id in orphans:
            await asyncio.to_thread(self.objects.delete_job, job_id)
            log.info("job %s: intake was interrupted before it was acknowledged; removed", job_id)
        for job_id, interruptions in requeued:
            log.info("job %s was interrupted (%d times); queued again", job_id, interruptions)
        for job_id in failed:
            log.warning("job %s failed: interrupted by %d daemon restarts", job_id, MAX_INTERRUPTIONS)
            job = self.store.get(job_id)
            if job:
                await self.worker.write_report(job, {"error": job.error, "attempts": job.attempts})
        for job_id in resent:
            # Crashed between the source's answer and the record of it: sending again may duplicate the
            # result, not sending may lose it. A duplicate is the lesser harm (see Delivery.deliver).
            log.warning("job %s: delivery was interrupted mid-send; sending again (may duplicate)", job_id)
        self.life.wakeup.set()

    async def redelivery_loop(self, interval_s: float = 5.0) -> None:
        while not self.life.stopping:
            try:
                await self.delivery.redeliver_pending()
            except Exception:
                log.exception("redelivery pass failed")
            await asyncio.sleep(interval_s)

    async def idle_unload_loop(self, interval_s: float = 10.0) -> None:
        idle_after = self.settings.models.idle_unload_s
        if idle_after <= 0:
            return
        while not self.life.stopping:
            await asyncio.sleep(interval_s)
            idle = (
                self.worker.running_job_id is None and time.monotonic() - self.worker.last_used >= idle_after
            )
            if idle:
                unloaded = await asyncio.to_thread(self.runner.unload_idle, idle_after)
                if unloaded:
                    log.info("unloaded idle models: %s", ", ".join(unloaded))

    async def sweep_expired(self, older_than_s: float) -> int:
        """Delete finished jobs older than the retention period: their objects first, then their rows."""
        expired = self.store.finished_before(time.time() - older_than_s)
        for job_id in expired:
            await asyncio.to_thread(self.objects.delete_job, job_id)
            await self.store.delete(job_id)
        if expired:
            log.info("retention: removed %d jobs older than %.1f days", len(expired), older_than_s / 86400)
        return len(expired)
