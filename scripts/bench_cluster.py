"""Engines on Ray (cluster.backend = "ray") against the local engine process, on this machine's CPU.

    .venv/bin/python scripts/bench_cluster.py                 # CycleGAN at 256 px, 8 jobs per row
    .venv/bin/python scripts/bench_cluster.py --side 128 --jobs 6

A real Ray cluster on loopback (tests/ray_cluster.py: token auth, its own process group) and a moto S3
server stand in for a head, its workers and MinIO; the models are random-init CycleGAN generators exported
by nstd's own converter (tests/checkpoints.py), so the compute is that of the real files.

Rows:
- latency: N jobs one after another through the job queue (submit to done, inputs and result through the
  store), the local engine process and one warm Ray replica taking turns; the difference is what Ray adds;
- throughput: N jobs sent at once to the runner with 1 and then 2 warm replicas (the daemon's queue runs
  one job at a time; a second daemon worker, or several daemons on one cluster, is what would use 2);
- first result from zero replicas: a deployment with min_replicas = 0 and an empty model cache, the time of
  its first job (replica start, model fetch, load, run), then of the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bench_common as bc

SIDE = 256
JOBS = 8


def settings_for(tmp: Path, endpoint: str, address: str, side: int, **cluster: Any) -> Any:
    from nst_daemon.config import Settings

    return Settings.model_validate(
        {
            "paths": {"state_dir": str(tmp / "state"), "models_dir": str(tmp / "models")},
            "store": {"backend": "s3", "endpoint_url": endpoint, "bucket": "bench"},
            "cyclegan": {"max_side": side, "cpu_threads": 1},
            "cluster": {
                "backend": "ray",
                "address": address,
                "gpus_per_replica": 0,
                "model_cache": str(tmp / "cache"),
                **cluster,
            },
        }
    )


async def submit_jobs(queue: Any, count: int, side: int) -> list[Any]:
    from checkpoints import random_image

    from nst_daemon import imaging
    from nst_daemon.jobs import JobRequest

    jobs = []
    for n in range(count):
        photo = imaging.encode_image(random_image((side, side * 3 // 4), seed=n), "jpeg")
        request = JobRequest(
            source="cli", owner=f"bench{n}", engine="cyclegan", styles=["monet"], content=photo
        )
        jobs.append(await queue.submit(request))
    return jobs


def make_queue(settings: Any, runner: Any) -> Any:
    from nst_daemon import db as database
    from nst_daemon.jobs import JobQueue
    from nst_daemon.store import open_store

    settings.queue.per_user = 1000
    settings.queue.max_pending = 1000
    return JobQueue(
        database.connect(settings.db_path), open_store(settings), settings.store.bucket, settings, runner
    )


async def alternating_latency(contenders: list[tuple[Any, Any]], count: int, side: int) -> list[list[float]]:
    """Seconds from submit to done, per contender (settings, runner), for `count` jobs each sent one at a
    time and alternating between the contenders, so that background load hits them alike; each one's
    first (warm-up) job is left out. Each contender has its own database and bucket."""
    from nst_daemon.jobs import FINAL_STATES

    queues = [make_queue(settings, runner) for settings, runner in contenders]
    workers = [asyncio.create_task(queue.run_worker()) for queue in queues]
    seconds: list[list[float]] = [[] for _ in queues]
    for _ in range(count + 1):
        for queue, times in zip(queues, seconds, strict=True):
            started = time.perf_counter()
            (job,) = await submit_jobs(queue, 1, side)
            while (current := queue.get(job.id)) is None or current.state not in FINAL_STATES:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert current.state == "done", current.error
            times.append(time.perf_counter() - started)
    for queue, worker in zip(queues, workers, strict=True):
        await queue.shutdown(5)
        await worker
    return [times[1:] for times in seconds]


def throughput(settings: Any, runner: Any, count: int, side: int) -> float:
    """Jobs per second with `count` jobs sent at once to the runner."""
    import threading

    async def make() -> list[Any]:
        return await submit_jobs(make_queue(settings, runner), count, side)

    jobs = asyncio.run(make())
    no_cancel = threading.Event()
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda job: runner.run(job, b"", [], lambda *_: None, no_cancel), jobs))
    elapsed = time.perf_counter() - started
    assert all(result.jpeg for result in results)
    return count / elapsed


def main() -> None:
    parser = bc.parser("cluster", __doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=SIDE, help=f"CycleGAN result side (default {SIDE})")
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"jobs per row (default {JOBS})")
    args = parser.parse_args()
    side, count = (64, 3) if args.smoke else (args.side, args.jobs)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from checkpoints import install_random_models
    from moto.server import ThreadedMotoServer
    from ray_cluster import RayCluster

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    install_random_models(tmp / "models", "bench")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    cluster = RayCluster(num_cpus=4).start()
    os.environ.update(cluster.env)
    results: dict[str, Any] = {"machine": bc.machine_info(), "smoke": args.smoke, "side": side, "jobs": count}
    try:
        results.update(run_rows(tmp, endpoint, cluster.address, side, count))
    finally:
        cluster.stop()
        moto.stop()
    bc.write_json(args.json, results)
    latency, scaling, cold = results["latency"], results["throughput"], results["first_result"]
    bc.print_tables(
        [
            (
                f"CycleGAN {side} px: seconds per job, submit to done, one at a time (median of {count})",
                ["backend", "median s", "p90 s", "added by Ray s"],
                [
                    ["local", latency["local_median_s"], latency["local_p90_s"], ""],
                    ["ray", latency["ray_median_s"], latency["ray_p90_s"], latency["added_s"]],
                ],
            ),
            (
                f"Throughput: {count} jobs sent at once",
                ["replicas", "jobs/s", "ratio to 1"],
                [
                    [1, scaling["one_replica_jobs_s"], 1.0],
                    [2, scaling["two_replicas_jobs_s"], scaling["ratio"]],
                ],
            ),
            (
                "From zero replicas (min_replicas = 0, empty model cache)",
                ["job", "seconds"],
                [["first", cold["first_s"]], ["next", cold["next_s"]]],
            ),
        ],
        args.json,
    )


def run_rows(tmp: Path, endpoint: str, address: str, side: int, count: int) -> dict[str, Any]:
    from ray import serve

    from nst_daemon.cluster.runner import RayRunner, app_name
    from nst_daemon.engine_process import ProcessRunner

    settings = settings_for(tmp, endpoint, address, side, min_replicas=1, max_replicas=1)
    local_settings = settings_for(tmp / "local", endpoint, address, side)
    local_settings.paths.models_dir = settings.paths.models_dir
    local_settings.store.bucket = "bench-local"
    local = ProcessRunner(local_settings)
    ray_runner = RayRunner(settings)
    assert ray_runner.ready(), ray_runner.problem
    try:
        bc.log("latency: the local engine process and one Ray replica, alternating")
        contenders = [(local_settings, local), (settings, ray_runner)]
        local_s, ray_s = asyncio.run(alternating_latency(contenders, count, side))
    finally:
        local.close()

    rates = {}
    for replicas in (1, 2):
        bc.log(f"throughput: {replicas} replica(s)")
        scaled = RayRunner(
            settings_for(tmp, endpoint, address, side, min_replicas=replicas, max_replicas=replicas)
        )
        assert scaled.ready()
        scaled.handle("cyclegan").pid.remote().result(timeout_s=300)
        throughput(settings, scaled, replicas, side)  # warm every replica's model
        rates[replicas] = throughput(settings, scaled, count, side)

    bc.log("first result from zero replicas")
    serve.delete(app_name("cyclegan"))
    cold_settings = settings_for(tmp, endpoint, address, side, min_replicas=0, max_replicas=1)
    cold_settings.cluster.model_cache = str(tmp / "cold-cache")
    cold = RayRunner(cold_settings)
    assert cold.ready()
    cold.handle("cyclegan")
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        throughput(settings, cold, 1, side)
        timings.append(time.perf_counter() - started)
    ray_runner.close()
    return {
        "latency": {
            "local_s": local_s,
            "ray_s": ray_s,
            "local_median_s": bc.median(local_s),
            "local_p90_s": bc.percentile(local_s, 90),
            "ray_median_s": bc.median(ray_s),
            "ray_p90_s": bc.percentile(ray_s, 90),
            "added_s": bc.median(ray_s) - bc.median(local_s),
        },
        "throughput": {
            "one_replica_jobs_s": rates[1],
            "two_replicas_jobs_s": rates[2],
            "ratio": bc.ratio(rates[2], rates[1]),
        },
        "first_result": {"first_s": timings[0], "next_s": timings[1]},
    }


if __name__ == "__main__":
    main()
