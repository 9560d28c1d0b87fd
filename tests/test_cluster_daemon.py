"""The real `nstd run` with cluster.backend = "ray": a watched-folder job waits queued while the cluster
cannot be reached, and completes on a replica once it can; the store is a moto S3 server."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest
from conftest import wait_until
from ray_cluster import RayCluster, free_port
from test_store_conformance import moto_endpoint  # noqa: F401  (the session's moto server)
from test_watch_e2e import drop

from nst_daemon.config import load_settings

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (the [ray] extra)", allow_module_level=True)


def job_states(db_path: Path) -> list[tuple[str, int]]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as conn:
        return list(conn.execute("select state, attempts from jobs order by id"))


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
