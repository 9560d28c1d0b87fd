"""Delivery: a finished job's result (or its failure) handed back to its source, exactly once short of a
crash in one window, and handed again later while the source cannot take it."""

from __future__ import annotations

import asyncio
import logging
import time

from nst_daemon.backoff import Backoff
from nst_daemon.job_model import Deliverer, Job, PermanentDeliveryError
from nst_daemon.jobs.wiring import QueuePart, Shared

log = logging.getLogger(__name__)

# Waits between a job's delivery attempts, counted from its last try (see `redeliver_pending`).
REDELIVERY = Backoff((5, 15, 60, 300))
MAX_DELIVERY_ATTEMPTS = 100
# At shutdown, how long deliveries in flight may go on; what is left is redelivered at the next start.
DELIVERY_GRACE_S = 5.0


class Delivery(QueuePart):
    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.deliverers: dict[str, Deliverer] = {}
        self._delivering: set[int] = set()

    def set_deliverer(self, source: str, deliverer: Deliverer) -> None:
        self.deliverers[source] = deliverer

    async def finish(self, job: Job | None, result: bytes | None = None, *, background: bool = False) -> None:
        """Tell the listeners of a job's final state and deliver it: in a task of its own for the worker,
        so a slow Telegram (429 waits, an outage) does not hold up the next job on the GPU."""
        if job is None:
            return
        await self.listeners.notify(job)
        if not background:
            await self.deliver(job, result)
            return
        self.life.spawn(self.deliver(job, result))

    async def deliver(self, job: Job, result: bytes | None = None) -> None:
        """Exactly once, short of a crash in one window. The delivery is claimed in the database first
        (pending -> sending, only where still pending at the attempts this caller saw), so two callers
        (the worker's and a redelivery pass working from an older read) cannot both send it. The one
        window left is between the source's answer and the commit of "delivered": a crash there leaves
        the row "sending", and recovery sends it again (a possible duplicate, never a loss)."""
        deliverer = self.deliverers.get(job.source)
        if deliverer is None or job.delivery != "pending" or job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            claimed = await self.store.claim_delivery(job.id, job.delivery_attempts)
            if claimed is None:
                return  # delivered, failed or being sent meanwhile
            await self._send(deliverer, claimed, result)
        finally:
            self._delivering.discard(job.id)

    async def _send(self, deliverer: Deliverer, job: Job, result: bytes | None) -> None:
        attempts = job.delivery_attempts + 1
        try:
            if result is None and job.state == "done" and job.output_key:
                result = await asyncio.to_thread(self.objects.get, job.output_key)
            await deliverer(job, result)
        except asyncio.CancelledError:
            # Shut down mid-send: whether it arrived is unknown, so it is sent again at the next start.
            await asyncio.shield(self.store.update(job.id, {"delivery": "pending"}))
            raise
        except PermanentDeliveryError as exc:
            await self.store.update(job.id, {"delivery": "failed", "delivery_attempts": attempts})
            log.warning("job %s: delivery failed for good: %s", job.id, exc)
        except Exception as exc:
            state = "failed" if attempts >= MAX_DELIVERY_ATTEMPTS else "pending"
            await self.store.update(job.id, {"delivery": state, "delivery_attempts": attempts})
            log.warning("job %s: delivery to %s failed (attempt %d): %s", job.id, job.source, attempts, exc)
        else:
            await self.store.update(job.id, {"delivery": "delivered", "delivery_attempts": attempts})

    async def redeliver_pending(self) -> int:
        """Retry finished jobs whose result has not reached their source yet, each after its backoff.

        The rows read here may be stale by the time each turn comes (an earlier delivery can wait through
        minutes of flood control); `deliver`'s claim re-checks each one in the database before sending."""
        now = time.time()
        count = 0
        for job in self.store.undelivered(list(self.deliverers)):
            waited = now - (job.updated_at or 0)
            if job.delivery_attempts and waited < REDELIVERY.delay(job.delivery_attempts):
                continue
            await self.deliver(job)
            count += 1
        return count
