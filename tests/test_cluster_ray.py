"""RayRunner on a real Ray cluster (loopback, token auth) with a moto S3 store: jobs run on Serve replicas
that read and write the store by key, from zero replicas, survive a replica SIGKILLed mid-job at the cost
of one attempt, reuse a result already stored, and refuse a tampered model.

One cluster, one moto server and one driver connection for the whole module: starting Ray costs seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Not importorskip: Ray reads its token settings when first imported, which must come after the
# fixture has put the cluster's token in the environment.
if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (the [ray] extra)", allow_module_level=True)

from checkpoints import install_random_models
from job_helpers import jpeg
from ray_cluster import RayCluster
from test_store_conformance import moto_endpoint  # noqa: F401  (the session's moto server)

from nst_daemon import db as database
from nst_daemon.cluster.models import MODELS_PREFIX
from nst_daemon.cluster.runner import RayRunner, app_name
from nst_daemon.config import Settings
from nst_daemon.jobs import FINAL_STATES, Job, JobQueue, JobRequest
from nst_daemon.store import get_bytes, open_store, put_bytes

JOB_TIMEOUT_S = 150.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    ray: RayCluster
    settings: Settings
    runner: RayRunner
    tmp: Path


@pytest.fixture(scope="module")
def cluster(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("cluster")
    models = tmp / "models"
    install_random_models(models, "test")
    ray = RayCluster().start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ray.env.items():
            mp.setenv(name, value)
        settings = Settings.model_validate(
            {
                "paths": {"state_dir": str(tmp / "state"), "models_dir": str(models)},
                "store": {"backend": "s3", "endpoint_url": moto_endpoint, "bucket": "nstd-ray"},
                "cyclegan": {"max_side": 64, "cpu_threads": 1},
                "nst": {"preset": "fast", "max_side": 128, "cpu_threads": 1},
                "models": {"idle_unload_s": 600},
                "cluster": {
                    "backend": "ray",
                    "address": ray.address,
                    "gpus_per_replica": 0,
                    "min_replicas": 0,
                    "max_replicas": 1,
                    "timeout_s": 120,
                    "model_cache": str(tmp / "replica-cache"),
                },
            }
        )
        runner = RayRunner(settings)
        try:
            yield Cluster(ray, settings, runner, tmp)
        finally:
            runner.close()  # the driver leaves before its cluster goes
            ray.stop()


def running_replicas(engine: str) -> int:
    from ray import serve

    application = serve.status().applications.get(app_name(engine))
    if application is None:
        return 0
    return application.deployments[app_name(engine)].replica_states.get("RUNNING", 0)


class Harness:
    """A JobQueue on the module's runner, with a worker task and a deliverer that records each delivery."""

    def __init__(self, cluster: Cluster) -> None:
        # One database for the module: job ids, and so the store keys they name, never repeat.
        settings = cluster.settings
        self.store = open_store(settings)
        self.queue = JobQueue(
            database.connect(settings.db_path), self.store, settings.store.bucket, settings, cluster.runner
        )
        self.delivered: list[tuple[int, bytes | None]] = []

        async def deliver(job: Job, result: bytes | None) -> None:
            self.delivered.append((job.id, result))

        self.queue.set_deliverer("cli", deliver)
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker = asyncio.create_task(self.queue.run_worker())

    async def wait_final(self, job_id: int) -> Job:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = self.queue.get(job_id)
            if job is not None and job.state in FINAL_STATES and job.delivery == "delivered":
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish: {self.queue.get(job_id)}")

    async def stop(self) -> None:
        await self.queue.shutdown(5)
        if self.worker is not None:
            await self.worker

    async def complete(self, request: JobRequest) -> Job:
        """Submit one job with the worker running; the job once final and delivered."""
        self.start()
        job = await self.queue.submit(request)
        try:
            return await self.wait_final(job.id)
        finally:
            await self.stop()


def cyclegan(color: tuple[int, int, int]) -> JobRequest:
    return JobRequest(
        source="cli", owner="u", engine="cyclegan", styles=["monet"], content=jpeg(color, (96, 64))
    )


def test_a_job_runs_on_a_replica_scaled_from_zero_and_its_result_is_at_the_fixed_key(
    cluster: Cluster,
) -> None:
    runner = cluster.runner
    assert runner.ready(), runner.problem
    runner.handle("cyclegan")  # deployed, with min_replicas = 0
    assert running_replicas("cyclegan") == 0

    async def scenario() -> Job:
        harness = Harness(cluster)
        done = await harness.complete(cyclegan((200, 60, 30)))
        result = get_bytes(harness.store, "nstd-ray", f"jobs/{done.id}/result.jpg")
        assert harness.delivered == [(done.id, result)]
        return done

    done = asyncio.run(scenario())
    assert (done.state, done.attempts, done.output_key) == ("done", 0, f"jobs/{done.id}/result.jpg")
    assert running_replicas("cyclegan") == 1
    store = open_store(cluster.settings)
    report = get_bytes(store, "nstd-ray", f"jobs/{done.id}/report.json").decode()
    assert '"replica_pid"' in report and '"model": "style_monet"' in report
    # The replica fetched its model from the store into its own cache, checked against the head's digest.
    assert (cluster.tmp / "replica-cache" / "style_monet.onnx").read_bytes() == (
        cluster.settings.paths.models_dir / "style_monet.onnx"
    ).read_bytes()


def test_a_retry_after_a_lost_reply_finds_the_result_and_returns_at_once(cluster: Cluster) -> None:
    runner = cluster.runner
    handle = runner.handle("cyclegan")

    async def scenario() -> tuple[Job, list[tuple[int, bytes | None]]]:
        harness = Harness(cluster)
        job = await harness.queue.submit(cyclegan((20, 160, 90)))
        # The replica ran it and stored the result, but its reply never came back:
        first = await asyncio.to_thread(lambda: handle.run.remote(job).result(timeout_s=JOB_TIMEOUT_S))
        assert first["reused"] is False
        again = await asyncio.to_thread(lambda: handle.run.remote(job).result(timeout_s=JOB_TIMEOUT_S))
        assert again["reused"] is True and again["key"] == first["key"]
        # ... so the queue's run of it (a retry, or the next start) completes without running the engine.
        harness.start()
        done = await harness.wait_final(job.id)
        await harness.stop()
        return done, harness.delivered

    done, delivered = asyncio.run(scenario())
    assert (done.state, done.attempts) == ("done", 0)
    assert len(delivered) == 1 and delivered[0][1]
    report = get_bytes(open_store(cluster.settings), "nstd-ray", f"jobs/{done.id}/report.json").decode()
    assert '"reused": true' in report


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def test_a_replica_killed_mid_job_costs_one_attempt_and_the_job_completes_once(cluster: Cluster) -> None:
    runner = cluster.runner
    handle = runner.handle("nst")
    pid = handle.pid.remote().result(timeout_s=JOB_TIMEOUT_S)
    idle_cpu = cpu_seconds(pid)
    request = JobRequest(
        source="cli",
        owner="u",
        engine="nst",
        content=jpeg((90, 90, 200), (128, 96)),
        style_images=[jpeg((250, 200, 20), (64, 64))],
        params={"preset": "fast"},
    )

    async def scenario() -> tuple[Job, list[tuple[int, bytes | None]]]:
        harness = Harness(cluster)
        harness.start()
        job = await harness.queue.submit(request)
        # Mid-job: the replica has spent a second of CPU on it (fetching, loading, optimising).
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while cpu_seconds(pid) - idle_cpu < 1.0:
            assert time.monotonic() < deadline, "the replica never started the job"
            await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        done = await harness.wait_final(job.id)
        await harness.stop()
        return done, harness.delivered

    done, delivered = asyncio.run(scenario())
    assert (done.state, done.attempts) == ("done", 1), done.error
    assert [job_id for job_id, _ in delivered] == [done.id]
    store = open_store(cluster.settings)
    listing = store.list_objects_v2(Bucket="nstd-ray", Prefix=f"jobs/{done.id}/")
    assert sorted(item["Key"].rsplit("/", 1)[1] for item in listing["Contents"]) == [
        "content.jpg",
        "report.json",
        "result.jpg",
        "style-1.jpg",
    ]
    report = get_bytes(store, "nstd-ray", f"jobs/{done.id}/report.json").decode()
    assert f'"replica_pid": {pid}' not in report  # a new replica ran it


def test_no_test_connection_leaves_loopback(cluster: Cluster) -> None:
    assert cluster.runner.ready()
    ours = {os.getpid()} | cluster.ray.session_pids()
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    seen = 0
    for line in out.splitlines():
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if not pids & ours:
            continue
        seen += 1
        local, peer = line.split()[3:5]
        for address in (local, peer):
            host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
            assert host.startswith("127."), line
    assert seen > 0, "no connection of the cluster or this process was found: the check would prove nothing"


def test_a_tampered_model_in_the_store_is_refused_by_a_fresh_replica(cluster: Cluster) -> None:
    # Last: it redeploys the CycleGAN application with an empty cache and changes the store.
    settings = cluster.settings
    fresh = settings.model_copy(
        update={"cluster": settings.cluster.model_copy(update={"model_cache": str(cluster.tmp / "fresh")})}
    )
    store = open_store(settings)
    model = settings.paths.models_dir / "style_monet.onnx"
    from nst_daemon.cluster.models import file_digest

    key = MODELS_PREFIX + file_digest(model)
    put_bytes(store, "nstd-ray", key, b"not the generator the head published")
    runner = RayRunner(fresh)
    try:
        assert runner.ready(), runner.problem
        cluster_runner, cluster.runner = cluster.runner, runner

        try:
            failed = asyncio.run(Harness(cluster).complete(cyclegan((10, 10, 10))))
        finally:
            cluster.runner = cluster_runner
    finally:
        put_bytes(store, "nstd-ray", key, model.read_bytes())
    assert failed.state == "failed"
    assert "style_monet.onnx in the store does not match its digest" in (failed.error or "")
    assert not (cluster.tmp / "fresh" / "style_monet.onnx").exists()
