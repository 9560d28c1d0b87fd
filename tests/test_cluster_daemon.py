"""The real `nstd run` with cluster.backend = "ray": a watched-folder job waits queued while the cluster
cannot be reached, and completes on a replica once it can; the store is a moto S3 server."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from PIL import Image
from ray_cluster import RayCluster, free_port, ray_cluster
from test_store_conformance import moto_endpoint  # noqa: F401  (the session's moto server)
from test_watch_e2e import drop

from nst_daemon import imaging
from nst_daemon.config import load_settings
from nst_daemon.store import get_bytes, object_exists, open_store

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (the [ray] extra)", allow_module_level=True)


def job_states(db_path: Path) -> list[tuple[str, int]]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        return list(conn.execute("select state, attempts from jobs order by id"))


def drop_photo(path: Path, size: tuple[int, int]) -> None:
    """A noisy photo of `size` (noise: a flat image would compress to nothing), renamed in when complete."""
    pixels = Image.effect_noise(size, 60).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_bytes(imaging.encode_image(pixels, "jpeg"))
    part.rename(path)


def test_a_folder_job_waits_for_an_unreachable_cluster_then_completes_on_it(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cluster = RayCluster(port=free_port())
    config = daemon_config(
        watch={"enabled": True, "settle_s": 0.1},
        store={"backend": "s3", "endpoint_url": moto_endpoint, "bucket": "nstd-daemon"},
        cluster={
            "backend": "ray",
            "address": cluster.address,
            "gpus_per_replica": 0,
            "model_cache": str(tmp_path / "replica-cache"),
        },
    )
    settings = load_settings(config)
    inbox, outbox = (settings.watch.dir / top / "monet" for top in ("inbox", "outbox"))
    daemon = daemon_process(config, env=cluster.env).start()
    try:
        drop(inbox / "harbour.jpg", (30, 120, 200))
        daemon.wait_for_log(f"the Ray cluster at {cluster.address} does not answer", 30)
        wait_until(lambda: job_states(settings.db_path) == [("queued", 0)], 30, 0.1, "the job, queued")
        cluster.start()
        result = outbox / "harbour.monet.jpg"
        wait_until(result.exists, 180, 0.2, "the result in the outbox")
        assert daemon.stop(60) == 0
    finally:
        daemon.kill()
        cluster.stop()
    assert job_states(settings.db_path) == [("done", 0)]
    assert sorted(path.name for path in outbox.iterdir()) == ["harbour.monet.jpg"]
    assert "the Ray cluster is reachable again" in daemon.log
    assert "engines on Ray (127.0.0.1:" in daemon.log


def replica_started_a_job(model_cache: Path) -> bool:
    """A replica writes its cache's manifest inside `run`, after fetching the job's model and before running
    the engine: the sign that a job has reached it."""
    return (model_cache / "manifest.json").exists()


def test_a_daemon_killed_mid_job_finds_the_replicas_result_at_restart_and_runs_nothing_again(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_cache = tmp_path / "replica-cache"
    with ray_cluster() as cluster:
        config = daemon_config(
            watch={"enabled": True, "settle_s": 0.1},
            store={"backend": "s3", "endpoint_url": moto_endpoint, "bucket": "nstd-restart"},
            # Big enough that the replica is still busy when the daemon is killed.
            cyclegan={"max_side": 768, "cpu_threads": 1},
            cluster={
                "backend": "ray",
                "address": cluster.address,
                "gpus_per_replica": 0,
                "model_cache": str(model_cache),
            },
        )
        settings = load_settings(config)
        store = open_store(settings)
        inbox, outbox = (settings.watch.dir / top / "monet" for top in ("inbox", "outbox"))
        daemon = daemon_process(config, env=cluster.env).start()
        drop_photo(inbox / "harbour.jpg", (768, 576))
        wait_until(lambda: replica_started_a_job(model_cache), 180, 0.02, "the job on a replica")
        daemon.kill()  # SIGKILL: no grace, no clean-up; the row stays "running"
        assert job_states(settings.db_path) == [("running", 0)]
        # The replica carries on without its caller and stores the result at the job's fixed key.
        result_key = "jobs/1/result.jpg"
        wait_until(lambda: object_exists(store, "nstd-restart", result_key), 120, 0.2, "the replica's result")
        stored = get_bytes(store, "nstd-restart", result_key)

        daemon.start()
        wait_until((outbox / "harbour.monet.jpg").exists, 60, 0.1, "the result in the outbox")
        assert daemon.stop(60) == 0
    assert job_states(settings.db_path) == [("done", 0)]
    assert sorted(path.name for path in outbox.iterdir()) == ["harbour.monet.jpg"]
    assert (outbox / "harbour.monet.jpg").read_bytes() == stored
    # Marked done from the stored result: the restarted daemon called no replica.
    assert '"reused": true' in get_bytes(store, "nstd-restart", "jobs/1/report.json").decode()
    assert "deployed nstd-cyclegan" not in daemon.log


def replica_pid(store: Any, bucket: str, job_id: int) -> int:
    return json.loads(get_bytes(store, bucket, f"jobs/{job_id}/report.json"))["replica_pid"]


def test_a_worker_node_removed_mid_job_costs_one_attempt_and_the_job_completes_once_on_the_head(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_cache = tmp_path / "replica-cache"
    with ray_cluster(num_cpus=1) as cluster:
        # The head's only CPU is held, so the replica (one CPU) starts on the worker node.
        holder = cluster.hold_cpus(1)
        worker = cluster.add_node(num_cpus=1)
        config = daemon_config(
            watch={"enabled": True, "settle_s": 0.1},
            store={"backend": "s3", "endpoint_url": moto_endpoint, "bucket": "nstd-node-lost"},
            nst={"preset": "fast", "max_side": 160, "cpu_threads": 1},
            cluster={
                "backend": "ray",
                "address": cluster.address,
                "gpus_per_replica": 0,
                "model_cache": str(model_cache),
            },
        )
        settings = load_settings(config)
        store = open_store(settings)
        drop_photo(settings.watch.dir / "styles" / "brush.jpg", (96, 96))
        daemon = daemon_process(config, env=cluster.env).start()
        drop_photo(settings.watch.dir / "inbox" / "nst" / "harbour.jpg", (160, 120))
        wait_until(lambda: replica_started_a_job(model_cache), 180, 0.02, "the job on a replica")
        replicas_on_worker = worker.session_pids()
        worker.stop()  # the worker leaves mid-job ...
        holder.stop()  # ... and the head has a CPU for the replica that replaces it
        outbox = settings.watch.dir / "outbox" / "nst"
        wait_until(lambda: outbox.is_dir() and any(outbox.iterdir()), 240, 0.2, "the result in the outbox")
        head = cluster.session_pids()
        assert daemon.stop(60) == 0
    assert job_states(settings.db_path) == [("done", 1)]
    assert len(list(outbox.iterdir())) == 1
    pid = replica_pid(store, "nstd-node-lost", 1)
    assert pid in head and pid not in replicas_on_worker
    assert "the Ray replica was lost mid-job" in daemon.log
