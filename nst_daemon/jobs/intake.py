"""Intake: a request checked, its images stored, its row written; only then may its source acknowledge it."""

from __future__ import annotations

import asyncio
import logging

from nst_daemon import imaging
from nst_daemon.errors import DiskFull, NstdError, is_disk_full
from nst_daemon.job_model import ENGINES, SOURCES, Job, JobRequest, job_prefix
from nst_daemon.jobs.wiring import QueuePart

log = logging.getLogger(__name__)

# The intake check decodes JPEGs at this fraction of their size (1/64 of the pixels); other formats are
# checked from their header only (`imaging.check_image`).
INTAKE_SCALE_DOWN = 8


class Intake(QueuePart):
    async def submit(self, request: JobRequest) -> Job:
        """Validate, store the inputs, write the row; only then may the caller acknowledge the request."""
        if not self.life.accepting:
            raise NstdError("nstd is shutting down; try again in a minute")
        if request.source not in SOURCES or request.engine not in ENGINES:
            raise ValueError(f"bad job request: source={request.source!r} engine={request.engine!r}")
        if request.engine in ("nst", "adain") and not request.style_images:
            raise NstdError("multi-style NST needs at least one style image")
        queue = self.settings.queue
        self.store.check_capacity(request.owner, queue.max_pending, queue.per_user)  # cheap and early
        infos = await asyncio.to_thread(self._check_inputs, request)
        job = await self._insert(request, infos)
        log.info(
            "job %s queued: %s %s from %s %r", job.id, job.engine, job.style_label, job.source, job.owner
        )
        self.life.wakeup.set()
        await self.listeners.notify(job)
        return job

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
        that leaves a row without keys, which recovery removes; no one was told of it."""
        queue = self.settings.queue
        job_id = await self.store.reserve(request, queue.max_pending, queue.per_user)
        prefix = job_prefix(job_id)
        names = ["content"] + [f"style-{n}" for n in range(1, len(infos))]
        keys = [f"{prefix}{name}.{info.extension}" for name, info in zip(names, infos, strict=True)]
        images = [request.content, *request.style_images]
        try:
            for key, data, info in zip(keys, images, infos, strict=True):
                await asyncio.to_thread(self.objects.put, key, data, info.content_type)
            return await self.store.set_input_keys(job_id, keys)
        except BaseException as exc:
            # Nothing was acknowledged: take the row and whatever was stored back, then refuse.
            await asyncio.shield(self._discard(job_id))
            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                raise DiskFull(str(exc)) from exc
            raise

    async def _discard(self, job_id: int) -> None:
        try:
            await asyncio.to_thread(self.objects.delete_job, job_id)
        except Exception as exc:  # the row goes anyway; the retention sweep never sees these objects
            log.warning("job %s: could not remove the inputs of a refused intake: %s", job_id, exc)
        try:
            await self.store.delete(job_id)
        except Exception as exc:  # the caller's own error matters more; recovery removes the row later
            log.warning("job %s: could not remove the row of a refused intake: %s", job_id, exc)
