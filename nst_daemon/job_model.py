"""What a job is: its row (`Job`), the request that makes one, the runner's interface and result.
No SQL: the jobs table is read and written only by the job store (`nst_daemon.jobs.store`).
`nst_daemon.jobs` re-exports all of it next to the queue."""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from nst_daemon import imaging
from nst_daemon.engines import registry
from nst_daemon.errors import NstdError
from nst_daemon.wording import plural

SOURCES = ("telegram", "folder", "cli")


class _RegisteredEngines:
    """The engine registry's keys (engines/registry.py), read at each check: a plugin registered after
    import (a test's, or one named in NSTD_ENGINE_PLUGINS) is a valid job engine too."""

    def __contains__(self, key: object) -> bool:
        return key in registry.engine_keys()

    def __iter__(self) -> Iterator[str]:
        return iter(registry.engine_keys())


ENGINES = _RegisteredEngines()
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")
# A delivery is "sending" from its claim until the source's answer is recorded; see JobQueue._deliver.
DELIVERY_STATES = ("pending", "sending", "delivered", "failed")
UNDELIVERED_STATES = ("pending", "sending")


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


class DatabaseBusy(NstdError):
    def __init__(self) -> None:
        super().__init__("the server's database is busy; try again in a minute")


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
    # The row's last change: the redelivery backoff counts from it.
    updated_at: float | None = None

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
            updated_at=row.get("updated_at"),
        )

    @property
    def prefix(self) -> str:
        return job_prefix(self.id)

    @property
    def style_label(self) -> str:
        """ "Van Gogh", "mycat", "Instant (2 style images)": style_catalog.job_label, the one rule."""
        from nst_daemon.style_catalog import job_label

        named = self.params.get("style_name")
        return job_label(self.engine, self.styles, max(1, len(self.input_keys) - 1), named=named)


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
    """An engine's output: the image, or (from the engine process) the image already encoded as JPEG.
    `stored_key`: where the runner already stored that JPEG (a Ray replica writes `jobs/<id>/result.jpg`
    itself), so the queue need not store it again."""

    image: Image.Image | None
    report: dict[str, Any]
    jpeg: bytes | None = None
    stored_key: str | None = None

    def encoded(self) -> bytes:
        if self.jpeg is not None:
            return self.jpeg
        assert self.image is not None
        return imaging.encode_image(self.image, "jpeg")


# progress(fraction) or, from an engine with a live preview, progress(fraction, jpeg_bytes).
ProgressFn = Callable[..., None]


class Runner(Protocol):
    """Runs one job's engine. Called in a worker thread; must honour `cancel` and report progress.

    The images come as stored: the bytes as sent, whose header (not their pixels) intake checked. The
    runner decodes them where it runs, which for the daemon is its engine process.
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


# Optional, read with getattr, on a runner whose engines run elsewhere (cluster/runner.py):
# - `reads_store = True`: it reads a job's inputs from the store by `Job.input_keys` itself, so `run` gets
#   no image bytes;
# - `ready() -> bool`: False while its engines cannot be reached; jobs then stay queued;
# - `max_attempts`: the runs a job may take before it fails, in place of the queue's default.


Listener = Callable[[Job], Awaitable[None] | None]
# Hands a finished job back to where it came from; result is None for failed or cancelled jobs.
Deliverer = Callable[[Job, bytes | None], Awaitable[None]]
