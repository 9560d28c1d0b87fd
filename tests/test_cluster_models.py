"""Cluster pieces that need no Ray: the [cluster] config, the model publishing and the replica's digest
check, the store check, and a local-backend daemon that never imports Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nst_daemon.cluster.connection import probe, store_problem
from nst_daemon.cluster.models import MODELS_PREFIX, ModelCache, ModelDigestMismatch, publish_models
from nst_daemon.config import Settings, load_settings
from nst_daemon.errors import ClusterUnavailable, ModelNotInstalled
from nst_daemon.manifest import InstalledModel, read_manifest, runnable_path, write_manifest
from nst_daemon.store import LocalS3Client, get_bytes

REPO = Path(__file__).resolve().parents[1]


def installed(models: Path) -> None:
    (models / "style_monet.onnx").write_bytes(b"onnx graph " * 1000)
    (models / "vgg19.pth").write_bytes(b"vgg weights " * 1000)
    write_manifest(
        models,
        {
            name: InstalledModel(name, kind, "0" * 64, 1, "test", 0.0, [file], file, "import")
            for name, kind, file in (
                ("style_monet", "cyclegan", "style_monet.onnx"),
                ("vgg19", "vgg19", "vgg19.pth"),
            )
        },
    )


@pytest.fixture
def published(tmp_path: Path) -> tuple[LocalS3Client, dict]:
    models = tmp_path / "head-models"
    models.mkdir()
    installed(models)
    store = LocalS3Client(tmp_path / "store")
    store.create_bucket(Bucket="nstd")
    return store, publish_models(store, "nstd", models)


def test_publish_stores_each_file_once_under_its_digest(tmp_path: Path, published) -> None:
    store, models = published
    digest = models["style_monet"].digests["style_monet.onnx"]
    assert get_bytes(store, "nstd", MODELS_PREFIX + digest) == b"onnx graph " * 1000
    again = publish_models(store, "nstd", tmp_path / "head-models")
    assert again == models
    keys = [item["Key"] for item in store.list_objects_v2(Bucket="nstd")["Contents"]]
    assert sorted(keys) == sorted(MODELS_PREFIX + m.digests[m.entry["files"][0]] for m in models.values())


def test_a_replica_cache_fetches_once_and_loads_like_a_models_dir(tmp_path: Path, published) -> None:
    store, models = published
    cache = ModelCache(tmp_path / "cache", store, "nstd", models)
    cache.ensure(["style_monet"])
    assert runnable_path(tmp_path / "cache", "style_monet").read_bytes() == b"onnx graph " * 1000
    assert list(read_manifest(tmp_path / "cache")) == ["style_monet"]
    # A second replica on the same machine uses the cache: the store may even be gone.
    store.delete_object(Bucket="nstd", Key=MODELS_PREFIX + models["style_monet"].digests["style_monet.onnx"])
    ModelCache(tmp_path / "cache", store, "nstd", models).ensure(["style_monet"])
    with pytest.raises(ModelNotInstalled):
        cache.ensure(["style_vangogh"])


def test_a_tampered_model_in_the_store_is_refused(tmp_path: Path, published) -> None:
    store, models = published
    key = MODELS_PREFIX + models["vgg19"].digests["vgg19.pth"]
    store.put_object(Bucket="nstd", Key=key, Body=b"something else entirely")
    cache = ModelCache(tmp_path / "cache", store, "nstd", models)
    with pytest.raises(ModelDigestMismatch, match=r"vgg19: vgg19.pth in the store does not match its digest"):
        cache.ensure(["vgg19"])
    assert not (tmp_path / "cache" / "vgg19.pth").exists()
    assert "vgg19" not in read_manifest(tmp_path / "cache")


def test_a_changed_cached_file_is_fetched_again(tmp_path: Path, published) -> None:
    store, models = published
    ModelCache(tmp_path / "cache", store, "nstd", models).ensure(["vgg19"])
    (tmp_path / "cache" / "vgg19.pth").write_bytes(b"bit rot")
    ModelCache(tmp_path / "cache", store, "nstd", models).ensure(["vgg19"])
    assert (tmp_path / "cache" / "vgg19.pth").read_bytes() == b"vgg weights " * 1000


def test_cluster_config_accepts_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[cluster]\nbackend = "ray"\naddress = "10.0.0.5:6379"\nauth_token_file = "ray.token"\n')
    cluster = load_settings(path, environ={}).cluster
    assert (cluster.backend, cluster.address, cluster.min_replicas, cluster.max_replicas) == (
        "ray",
        "10.0.0.5:6379",
        0,
        1,
    )
    assert cluster.auth_token_file == tmp_path / "ray.token"
    assert load_settings(path, environ={"NSTD_CLUSTER__ADDRESS": "auto"}).cluster.address == "auto"


def test_probe_names_what_is_wrong(tmp_path: Path) -> None:
    settings = Settings.model_validate({"cluster": {"backend": "ray", "address": "127.0.0.1:9"}})
    with pytest.raises(ClusterUnavailable, match=r"the Ray cluster at 127.0.0.1:9 does not answer"):
        probe(settings)
    missing = Settings.model_validate({"cluster": {"backend": "ray", "auth_token_file": str(tmp_path / "t")}})
    with pytest.raises(ClusterUnavailable, match=r"cluster.auth_token_file: .* does not exist"):
        probe(missing)


def test_a_local_store_is_refused_for_a_cluster_of_several_nodes() -> None:
    joined = Settings.model_validate({"cluster": {"backend": "ray", "address": "10.0.0.5:6379"}})
    assert "replicas on other machines cannot read it" in store_problem(joined)
    assert "the cluster has 2 nodes" in store_problem(joined, nodes=2)
    assert store_problem(joined, nodes=1) == ""
    assert store_problem(Settings.model_validate({"cluster": {"backend": "ray"}})) == ""
    s3 = Settings.model_validate(
        {"cluster": {"backend": "ray", "address": "auto"}, "store": {"backend": "s3"}}
    )
    assert store_problem(s3, nodes=3) == ""


def test_a_local_backend_daemon_never_imports_ray(tmp_path: Path) -> None:
    """The daemon's own wiring, a queue and its runner, the doctor's cluster row: none loads Ray."""
    script = textwrap.dedent(
        f"""
        import sys
        from nst_daemon import cli, daemon, doctor, jobs
        from nst_daemon.config import Settings
        settings = Settings.model_validate({{"paths": {{"state_dir": {str(tmp_path)!r}}}}})
        runner = daemon.make_runner(settings)
        assert type(runner).__name__ == "ProcessRunner", runner
        print(doctor.check_cluster(settings).detail)
        import nst_daemon.cluster.connection
        print("ray loaded" if "ray" in sys.modules else "ray not loaded")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.splitlines()[-1] == "ray not loaded", out.stdout + out.stderr
