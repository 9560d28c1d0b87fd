"""The job queue's test doubles and helpers, shared by the test_jobs* modules (imported as `job_helpers`,
the way `image_corpus` is: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from nst_daemon import db as database
from nst_daemon import imaging, jobs
from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled
from nst_daemon.jobs import Job, JobQueue, JobRequest, RunResult
from nst_daemon.store import open_store


def jpeg(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (32, 24)) -> bytes:
    return imaging.encode_image(Image.new("RGB", size, color), "jpeg")


class FakeRunner:
    def __init__(self, seconds: float = 0.0, steps: int = 10, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.steps = steps
        self.error = error
        self.ran: list[int] = []
        self.unloaded = 0
        self.started = threading.Event()

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: Any,
        cancel: threading.Event,
    ) -> RunResult:
        self.ran.append(job.id)
        self.started.set()
        for step in range(self.steps):
            if cancel.is_set():
                raise Cancelled()
            time.sleep(self.seconds / self.steps)
            progress((step + 1) / self.steps)
        if self.error is not None:
            raise self.error
        flipped = imaging.load_image(content).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return RunResult(flipped, {"device": "fake"})

    def unload_idle(self, idle_s: float) -> list[str]:
        self.unloaded += 1
        return ["fake"]


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")}
    }
    raw.update(sections)
    return Settings.model_validate(raw)


def make_queue(tmp_path: Path, runner: Any, **sections: dict[str, Any]) -> JobQueue:
    settings = make_settings(tmp_path, **sections)
    return JobQueue(
        database.connect(settings.db_path), open_store(settings), settings.store.bucket, settings, runner
    )


def cyclegan_request(owner: str = "u1", content: bytes | None = None) -> JobRequest:
    return JobRequest(
        source="cli", owner=owner, engine="cyclegan", styles=["monet"], content=content or jpeg()
    )


def object_keys(queue: JobQueue, prefix: str) -> list[str]:
    listing = queue.store.list_objects_v2(Bucket=queue.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


async def run_until_final(queue: JobQueue, job_id: int, limit_s: float = 30) -> Job:
    worker = asyncio.create_task(queue.run_worker())
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            job = queue.get(job_id)
            delivered = job is not None and (
                job.delivery not in jobs.UNDELIVERED_STATES or job.source not in queue.delivery.deliverers
            )
            if job and job.state in jobs.FINAL_STATES and delivered:
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish: {queue.get(job_id)}")
    finally:
        await queue.shutdown(1)
        worker.cancel()
