"""One engine replica on a Ray node: reads a job's inputs from the store, runs the ordinary `EngineRunner`,
writes the result to `jobs/<id>/result.jpg`.

Plain Python, no Ray import: `RayRunner` wraps this class in `serve.deployment`. Images travel by store
key, never as arguments, and the result key is fixed, so a run is idempotent: a replica that finds the
result already stored (a retry after a reply was lost) answers at once without running the engine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from nst_daemon.cluster.models import ModelCache, PublishedModel, models_for
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.job_model import Job
from nst_daemon.store import get_bytes, object_exists, open_store, put_bytes

log = logging.getLogger(__name__)

RESULT_NAME = "result.jpg"


def result_key(job: Job) -> str:
    return f"{job.prefix}{RESULT_NAME}"


def default_model_cache() -> Path:
    return Path.home() / ".cache" / "nstd" / "models"


class EngineReplica:
    """`run(job)` -> {"key", "report", "pid", "reused"}; `pid()` for tests and `nstd doctor`."""

    def __init__(self, settings: dict[str, Any], published: dict[str, PublishedModel]) -> None:
        # Imported here: torch and ONNX Runtime load in the replica's process, never in the daemon's.
        from nst_daemon.runner import EngineRunner

        self.settings = Settings.model_validate(settings)
        cache = self.settings.cluster.model_cache
        root = Path(os.path.expanduser(cache)) if cache else default_model_cache()
        # The runner loads from the cache, which `ModelCache` fills from the store.
        self.settings.paths.models_dir = root
        self.store = open_store(self.settings)
        self.bucket = self.settings.store.bucket
        self.models = ModelCache(root, self.store, self.bucket, published)
        self.runner = EngineRunner(self.settings)
        log.info("nstd replica ready in pid %d (models cached in %s)", os.getpid(), root)

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> dict[str, Any]:
        key = result_key(job)
        if object_exists(self.store, self.bucket, key):
            return {"key": key, "report": {}, "pid": os.getpid(), "reused": True}
        started = time.monotonic()
        try:
            self.models.ensure(models_for(self.settings, job.engine, job.styles))
            content, *styles = [get_bytes(self.store, self.bucket, name) for name in job.input_keys]
            # Progress stays start and end (the daemon reports those); cancel arrives as Ray's cancellation.
            result = self.runner.run(job, content, styles, lambda *_: None, threading.Event())
        except NstdError as exc:
            # Its message is for the user; as a plain NstdError it crosses Ray whatever its subclass's
            # constructor takes.
            raise NstdError(exc.message) from None
        put_bytes(self.store, self.bucket, key, result.encoded(), "image/jpeg")
        report = {**result.report, "replica_seconds": round(time.monotonic() - started, 3)}
        return {"key": key, "report": report, "pid": os.getpid(), "reused": False}

    def unload_idle(self, idle_s: float) -> list[str]:
        return self.runner.unload_idle(idle_s)
