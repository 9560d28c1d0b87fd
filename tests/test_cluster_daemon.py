"""The real `nstd run` with cluster.backend = "ray", the store a moto S3 server: a watched-folder job waits
queued while the cluster cannot be reached and completes on a replica once it can; a daemon SIGKILLed
mid-job finds the replica's result at restart and runs nothing again; a worker node removed mid-job costs
one attempt and the job completes once on the head; a bot job (the fake Bot API) runs on a replica and is
delivered once.

The restart and bot tests share one head; the others start their own, since the states they need (not
yet started; a worker node and the head's CPUs held) do not mix."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from fake_telegram import DEFAULT_TOKEN, FakeTelegram
from ray_cluster import RayCluster, free_port, ray_cluster
from test_bot_e2e import SECRET, image_bytes, is_result
from test_store_conformance import moto_endpoint  # noqa: F401  (the session's moto server)
from test_watch_e2e import drop

from nst_daemon.config import load_settings
from nst_daemon.store import get_bytes, object_exists, open_store

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (the [ray] extra)", allow_module_level=True)


def job_states(db_path: Path) -> list[tuple[str, int]]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        return list(conn.execute("select state, attempts from jobs order by id"))


def ray_daemon_config(
    daemon_config: Callable[..., Path],
    endpoint: str,
    bucket: str,
    address: str,
    model_cache: Path,
    **sections: Any,
) -> Path:
    """A daemon with the watched folder on, an S3 store at `endpoint` and its engines on the Ray head at
    `address` (no GPUs); `sections` adds to it."""
    return daemon_config(
        watch={"enabled": True, "settle_s": 0.1},
        store={"backend": "s3", "endpoint_url": endpoint, "bucket": bucket},
        cluster={
            "backend": "ray",
            "address": address,
            "gpus_per_replica": 0,
            "model_cache": str(model_cache),
        },
        **sections,
    )


def test_a_folder_job_waits_for_an_unreachable_cluster_then_completes_on_it(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cluster = RayCluster(port=free_port())
    config = ray_daemon_config(
        daemon_config, moto_endpoint, "nstd-daemon", cluster.address, tmp_path / "replica-cache"
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
        stopping = time.monotonic()
        assert daemon.stop(60) == 0, daemon.log_since(stopping)
    finally:
        daemon.kill()
        cluster.stop()
    assert job_states(settings.db_path) == [("done", 0)]
    assert sorted(path.name for path in outbox.iterdir()) == ["harbour.monet.jpg"]
    assert "the Ray cluster is reachable again" in daemon.log
    assert "engines on Ray (127.0.0.1:" in daemon.log


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RayCluster]:
    """A head with room for replicas, for the tests that need nothing else of it (starting one costs
    seconds); each test uses its own bucket and model cache."""
    with ray_cluster() as cluster:
        yield cluster


def replica_started_a_job(model_cache: Path) -> bool:
    """A replica writes its cache's manifest inside `run`, after fetching the job's model and before running
    the engine: the sign that a job has reached it."""
    return (model_cache / "manifest.json").exists()


def test_a_daemon_killed_mid_job_finds_the_replicas_result_at_restart_and_runs_nothing_again(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
    shared_cluster: RayCluster,
) -> None:
    model_cache = tmp_path / "replica-cache"
    config = ray_daemon_config(
        daemon_config,
        moto_endpoint,
        "nstd-restart",
        shared_cluster.address,
        model_cache,
        # Big enough that the replica is still busy when the daemon is killed.
        cyclegan={"max_side": 768, "cpu_threads": 1},
    )
    settings = load_settings(config)
    store = open_store(settings)
    inbox, outbox = (settings.watch.dir / top / "monet" for top in ("inbox", "outbox"))
    daemon = daemon_process(config, env=shared_cluster.env).start()
    drop(inbox / "harbour.jpg", (30, 120, 200), (768, 576))
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


def serve_replicas(pids: set[int], app: str) -> set[int]:
    """Those of `pids` that are replicas of the Serve application `app` (Ray names the process after it)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if f"ServeReplica:{app}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
    return found


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
        config = ray_daemon_config(
            daemon_config,
            moto_endpoint,
            "nstd-node-lost",
            cluster.address,
            model_cache,
            nst={"preset": "fast", "max_side": 160, "cpu_threads": 1},
        )
        settings = load_settings(config)
        store = open_store(settings)
        daemon = daemon_process(config, env=cluster.env).start()
        drop(settings.watch.dir / "styles" / "brush.jpg", (250, 200, 20), (96, 96))
        drop(settings.watch.dir / "inbox" / "nst" / "harbour.jpg", (90, 90, 200), (160, 120))
        wait_until(lambda: replica_started_a_job(model_cache), 180, 0.02, "the job on a replica")
        replicas_on_worker = serve_replicas(worker.session_pids(), "nstd-nst")
        assert replicas_on_worker, "the first replica did not start on the worker node"
        worker.stop()  # the worker leaves mid-job ...
        holder.stop()  # ... and the head has a CPU for the replica that replaces it
        outbox = settings.watch.dir / "outbox" / "nst"
        wait_until(lambda: outbox.is_dir() and any(outbox.iterdir()), 240, 0.2, "the result in the outbox")
        replicas_on_head = serve_replicas(cluster.session_pids(), "nstd-nst")
        assert daemon.stop(60) == 0
    assert job_states(settings.db_path) == [("done", 1)]
    assert len(list(outbox.iterdir())) == 1
    pid = replica_pid(store, "nstd-node-lost", 1)
    assert pid in replicas_on_head
    assert "the Ray replica was lost mid-job" in daemon.log


def test_a_bot_job_runs_on_a_replica_and_is_delivered_once(
    daemon_config,
    daemon_process,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
    shared_cluster: RayCluster,
) -> None:
    user = 5001
    with FakeTelegram() as server:
        config = ray_daemon_config(
            daemon_config,
            moto_endpoint,
            "nstd-bot",
            shared_cluster.address,
            tmp_path / "replica-cache",
            telegram={"token": DEFAULT_TOKEN, "api_base": server.base_url, "allowed_users": [user]},
        )
        settings = load_settings(config)
        daemon = daemon_process(config, env=shared_cluster.env).start()
        mark = server.mark()
        server.send_photo(user, image_bytes((120, 90)), caption="Monet")
        result = server.wait_for(lambda call: is_result(call, user), 180, mark)
        server.wait_text(user, "Monet: done in", since=mark)
        assert daemon.stop(60) == 0
    assert result.text.startswith("Monet · ")
    assert [call for call in server.sent(user, since=mark) if is_result(call, user)] == [result]
    assert job_states(settings.db_path) == [("done", 0)]
    store = open_store(settings)
    report = json.loads(get_bytes(store, "nstd-bot", "jobs/1/report.json"))
    assert report["replica_pid"] in serve_replicas(shared_cluster.session_pids(), "nstd-cyclegan")
    assert result.files["photo"] == get_bytes(store, "nstd-bot", "jobs/1/result.jpg")
    assert SECRET not in daemon.log
