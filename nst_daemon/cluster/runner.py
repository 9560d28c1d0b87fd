"""`RayRunner`: the `Runner` of jobs.py with its engines as Ray Serve deployments (cluster.backend = "ray").

Each engine (cyclegan, adain, nst) is one Serve application holding one deployment of `EngineReplica`,
with `max_ongoing_requests=1` (one GPU does one job at a time), its GPUs in `ray_actor_options`, and
autoscaling between cluster.min_replicas and cluster.max_replicas. The daemon calls it through a
`DeploymentHandle` from the queue's worker thread; there is no HTTP proxy.

SQLite stays the queue of record and Ray holds nothing a restart could lose: a job names its inputs by
store key, and its result has a fixed key, so a run that is repeated (after a lost reply, a replica killed
mid-job, a daemon restart) finds the result and returns at once. A fault (a replica or node lost, a
timeout) raises `ReplicaLost`, which the queue counts as one attempt and retries. While the cluster cannot
be reached, `ready()` is False and jobs wait queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from nst_daemon.cluster import connection
from nst_daemon.cluster.models import PublishedModel, publish_models
from nst_daemon.cluster.replica import EngineReplica, result_key
from nst_daemon.config import Settings
from nst_daemon.engine_process import EngineProcessDied
from nst_daemon.errors import Cancelled, ClusterUnavailable, NstdError, describe_failure
from nst_daemon.job_model import ENGINES, Job, ProgressFn, RunResult
from nst_daemon.store import get_bytes, object_exists, open_store

log = logging.getLogger(__name__)

NAMESPACE = "nstd"
POLL_S = 0.25
# After a failed connection, the next try waits this long (the worker asks before every job).
RECONNECT_EVERY_S = 5.0


class ReplicaLost(EngineProcessDied):
    """A replica or its node was lost mid-job, or the job ran past cluster.timeout_s: one attempt spent."""


def app_name(engine: str) -> str:
    return f"nstd-{engine}"


class RayRunner:
    reads_store = True  # the replicas read the inputs by key; the queue passes no image bytes

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster = settings.cluster
        self.max_attempts = settings.cluster.attempts
        self.store = open_store(settings)
        self.bucket = settings.store.bucket
        self._connected = False
        self._started_ray = False
        self._next_try = 0.0
        self.problem = ""  # why the cluster cannot be used, for the log and `status_line`
        self._handles: dict[str, Any] = {}
        self._published: dict[str, PublishedModel] = {}
        self._lock = threading.Lock()
        self._in_flight: set[Any] = set()

    # --- connecting ---

    def ready(self) -> bool:
        """Connect if not connected yet; False (the reason in `problem`, logged once) while unreachable."""
        with self._lock:
            if self._connected:
                return True
            if time.monotonic() < self._next_try:
                return False
            try:
                self._connect()
            except ClusterUnavailable as exc:
                self._next_try = time.monotonic() + RECONNECT_EVERY_S
                if exc.message != self.problem:
                    log.warning("%s; jobs wait queued until it is reachable", exc.message)
                self.problem = exc.message
                return False
            if self.problem:
                log.info("the Ray cluster is reachable again")
            self.problem = ""
            return True

    def _connect(self) -> None:
        connection.probe(self.settings)
        connection.apply_token(self.cluster)
        # Read when Ray is first imported: without it, a Ray call after `ray.shutdown` (Serve's handle
        # routers push metrics every 30 s) quietly starts a private local Ray in the daemon's process.
        os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
        import ray
        from ray import serve

        address = self.cluster.address or None
        try:
            if not ray.is_initialized():
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    **({} if address else {"include_dashboard": False}),
                )
                self._started_ray = address is None
            serve.start(proxy_location="Disabled")
            nodes = len([node for node in ray.nodes() if node.get("Alive")])
        except Exception as exc:
            self._disconnect()
            raise ClusterUnavailable(f"cannot join the Ray cluster: {describe_failure(exc)}") from exc
        if problem := connection.store_problem(self.settings, nodes):
            log.error("%s", problem)
        self._published = publish_models(self.store, self.bucket, self.settings.paths.models_dir)
        self._handles.clear()
        self._connected = True
        log.info(
            "engines on Ray (%s, %d node%s): %d model%s published to the store",
            self.cluster.address or "private single-node Ray",
            nodes,
            "" if nodes == 1 else "s",
            len(self._published),
            "" if len(self._published) == 1 else "s",
        )

    def _disconnect(self) -> None:
        import ray

        self._connected = False
        for handle in self._handles.values():
            with contextlib.suppress(Exception):  # its router's threads; the cluster may be gone already
                handle.shutdown()
        self._handles.clear()
        if ray.is_initialized():
            ray.shutdown()

    def handle(self, engine: str) -> Any:
        """The engine's deployment handle, deploying (or updating) its application on first use."""
        with self._lock:
            if not self._connected:
                raise ClusterUnavailable(self.problem or "the Ray cluster is not connected")
            handle = self._handles.get(engine)
            if handle is None:
                handle = self._deploy(engine)
                self._handles[engine] = handle
            return handle

    def _deploy(self, engine: str) -> Any:
        from ray import serve

        cluster = self.cluster
        deployment = serve.deployment(
            EngineReplica,
            name=app_name(engine),
            max_ongoing_requests=1,
            ray_actor_options={"num_gpus": cluster.gpus_per_replica},
            autoscaling_config={
                "min_replicas": cluster.min_replicas,
                "initial_replicas": cluster.min_replicas,
                "max_replicas": cluster.max_replicas,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                # An idle replica goes after models.idle_unload_s, as an idle local model does.
                "downscale_delay_s": max(self.settings.models.idle_unload_s, 1.0),
            },
        )
        # Everything a replica needs but the bot token; paths stay the head's (a replica keeps its models in
        # cluster.model_cache).
        settings = self.settings.model_dump(mode="json", exclude={"telegram", "source"})
        app = deployment.bind(settings, self._published)
        started = time.monotonic()
        handle = serve.run(app, name=app_name(engine), route_prefix=None)
        log.info("deployed %s in %.1f s", app_name(engine), time.monotonic() - started)
        return handle

    # --- running ---

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunResult:
        """Run `job` on a replica (its inputs are read there by key; `content` and `styles` are unused)."""
        key = result_key(job)
        if object_exists(self.store, self.bucket, key):
            # Done before (a reply lost, the daemon restarted after the replica finished): nothing to run.
            return self._stored(key, {"reused": True})
        if job.engine not in ENGINES:
            raise NstdError(f"unknown engine {job.engine!r}")
        progress(0.0)
        reply = self._call(self.handle(job.engine), job, cancel)
        progress(1.0)
        return self._stored(reply["key"], {**reply["report"], "replica_pid": reply["pid"]})

    def _call(self, handle: Any, job: Job, cancel: threading.Event) -> dict[str, Any]:
        from ray.exceptions import RayError, RayTaskError

        deadline = time.monotonic() + self.cluster.timeout_s
        response = handle.run.remote(job)
        self._in_flight.add(response)
        try:
            while True:
                if cancel.is_set():
                    response.cancel()
                    raise Cancelled()
                try:
                    return response.result(timeout_s=POLL_S)
                except TimeoutError as exc:
                    if isinstance(exc, RayTaskError):
                        raise
                    if time.monotonic() > deadline:
                        response.cancel()
                        limit = self.cluster.timeout_s
                        raise ReplicaLost(
                            f"the replica did not finish within cluster.timeout_s ({limit:g} s)"
                        ) from None
        except RayTaskError as exc:
            # The engine's own error (a bad image, a model refused): the job fails with its message.
            cause = exc.cause
            if isinstance(cause, NstdError):
                raise cause from None
            raise RuntimeError(describe_failure(cause or exc)) from None
        except RayError as exc:
            # A replica or node died, an object was lost: the job's run is lost, not its result.
            raise ReplicaLost(f"the Ray replica was lost mid-job ({describe_failure(exc)})") from exc
        finally:
            self._in_flight.discard(response)

    def _stored(self, key: str, report: dict[str, Any]) -> RunResult:
        return RunResult(None, report, jpeg=get_bytes(self.store, self.bucket, key), stored_key=key)

    # --- the rest of the Runner interface ---

    def unload_idle(self, idle_s: float) -> list[str]:
        """Serve scales idle replicas down by itself (after models.idle_unload_s); nothing is held here."""
        return []

    def abort(self) -> None:
        """Stop now: cancel whatever is in flight (best effort; the job stays queued)."""
        for response in list(self._in_flight):
            response.cancel()

    def close(self) -> None:
        """Leave the cluster; a private Ray started by nstd ends with it. Deployments on a shared cluster
        stay (they hold no state, and min_replicas may be 0)."""
        with self._lock:
            if self._connected or self._started_ray:
                self._disconnect()
