"""Model management against a loopback HTTP server: pull, resume, retry, verify, import, list.

Checkpoints are random-init files in the upstream formats (tests/checkpoints.py), generated once per session.
The test catalog points at the loopback server and pins the digests these files really have.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from checkpoints import cyclegan_shapes
from http_fixture import Checkpoint, CheckpointSet, FileServer, checkpoint_set, write_catalog
from rich.console import Console

from nst_daemon import catalog, download
from nst_daemon.backoff import Backoff
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.manifest import read_manifest

VGG_FILE = "vgg19-dcbb9e9d.pth"
CYCLEGAN_NAMES = {
    "style_monet": "monet",
    "style_cezanne": "cezanne",
    "style_ukiyoe": "ukiyoe",
    "style_vangogh": "vangogh",
    "summer2winter_yosemite": "summer2winter",
    "winter2summer_yosemite": "winter2summer",
}


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> CheckpointSet:
    return checkpoint_set(tmp_path_factory.getbasetemp() / "checkpoints")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY", Backoff.exponential(0.01, 30.0, max_retry_after=60.0))


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


class Env:
    """A models dir, a catalog served by `server`, and captured console output."""

    def __init__(self, tmp_path: Path, server: FileServer, ckpt: CheckpointSet) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.ckpt = ckpt
        self.models_dir = tmp_path / "models"
        self.catalog = tmp_path / "catalog.toml"
        self.out = io.StringIO()
        self.console = Console(file=self.out, width=200, color_system=None)

    def vgg_entry(self, checkpoint: Checkpoint | None = None, **overrides: object) -> dict[str, object]:
        checkpoint = checkpoint or self.ckpt.vgg19
        self.server.add_file(f"/{VGG_FILE}", checkpoint.path)
        entry: dict[str, object] = {
            "name": "vgg19",
            "kind": "vgg19",
            "style": "",
            "url": self.server.url(f"/{VGG_FILE}"),
            "file": VGG_FILE,
            "size": checkpoint.size,
            "sha256": checkpoint.sha256,
        }
        return {**entry, **overrides}

    def cyclegan_entry(self, name: str, checkpoint: Checkpoint | None = None, **overrides: object):
        checkpoint = checkpoint or self.ckpt.cyclegan
        self.server.add_file(f"/{name}.pth", checkpoint.path)
        entry: dict[str, object] = {
            "name": name,
            "kind": "cyclegan",
            "style": CYCLEGAN_NAMES.get(name, name),
            "url": self.server.url(f"/{name}.pth"),
            "file": f"{name}.pth",
            "size": 45_575_000,
            "size_exact": False,
        }
        return {**entry, **overrides}

    def settings(self, *entries: dict[str, object], mirror: str = "") -> Settings:
        write_catalog(self.catalog, list(entries))
        return Settings.model_validate(
            {
                "paths": {"models_dir": str(self.models_dir), "state_dir": str(self.tmp_path / "state")},
                "models": {"catalog": str(self.catalog), "mirror": mirror},
            }
        )

    def output(self) -> str:
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return text

    def model_files(self) -> list[str]:
        """Everything in the models dir except the lock directory."""
        if not self.models_dir.exists():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if p.name != catalog.LOCK_DIR)


@pytest.fixture
def env(tmp_path: Path, server: FileServer, ckpt: CheckpointSet) -> Env:
    return Env(tmp_path, server, ckpt)


def list_rows(listing: str) -> dict[str, list[str]]:
    """`models list` as {name: [name, style, installed, "", sha256]}: columns are 2+ spaces apart; the
    size is blanked (it depends on the test files)."""
    rows: dict[str, list[str]] = {}
    for line in listing.split("─\n", 1)[1].splitlines():
        cells = re.split(r" {2,}", line.strip())
        if len(cells) != 5:
            break  # the table ended: notes follow
        name, style, installed, _size, digest = cells
        rows[name] = [name, style, installed, "", digest]
    return rows


def gets(server: FileServer, path: str) -> list:
    return server.requests_for(path, "GET")


# --- pulling ------------------------------------------------------------------------------------------------


def test_pull_all_models_then_list_verify_and_repull_noop(env: Env) -> None:
    # The six CycleGAN entries serve the same bytes (one generated file); each is still exported to ONNX.
    entries = [env.vgg_entry()] + [env.cyclegan_entry(name) for name in CYCLEGAN_NAMES]
    settings = env.settings(*entries)

    assert catalog.pull(settings, [], console=env.console) == 0
    out = env.output()
    assert "trusting it on first use" in out
    assert "summary" in out

    manifest = read_manifest(env.models_dir)
    assert set(manifest) == {"vgg19", *CYCLEGAN_NAMES}
    assert manifest["vgg19"].pinned == "catalog"
    assert manifest["vgg19"].runnable == VGG_FILE
    assert manifest["vgg19"].sha256 == env.ckpt.vgg19.sha256
    for name in CYCLEGAN_NAMES:
        record = manifest[name]
        assert record.pinned == "tofu"
        assert record.sha256 == env.ckpt.cyclegan.sha256
        assert record.files == [f"{name}.pth", f"{name}.onnx"]
        assert record.runnable == f"{name}.onnx"
        assert (env.models_dir / f"{name}.onnx").stat().st_size > 40_000_000
    assert not [name for name in env.model_files() if name.endswith((".part", ".tmp"))]

    statuses = {status.name: status for status in catalog.installed_status(settings)}
    assert all(status.installed for status in statuses.values())
    assert statuses["vgg19"].verified and not statuses["style_monet"].verified
    assert statuses["style_monet"].runnable == env.models_dir / "style_monet.onnx"

    # An 80-column terminal shows every value whole: no "fir… use (to…" or "styl…" any more.
    env.console.width = 80
    catalog.print_list(settings, env.console)
    listing = env.output()
    assert "…" not in listing and max(len(line) for line in listing.splitlines()) <= 80, listing
    rows = list_rows(listing)
    assert rows["vgg19"] == ["vgg19", "(NST)", "yes, catalog", "", env.ckpt.vgg19.sha256[:12]]
    for name, style in CYCLEGAN_NAMES.items():
        assert rows[name] == [name, style, "yes, tofu", "", env.ckpt.cyclegan.sha256[:12]]
    env.console.width = 200

    assert catalog.verify_all(settings, env.console) == 0
    assert "style_monet: ok" in env.output()

    # Re-pull: nothing is downloaded.
    env.server.clear_log()
    assert catalog.pull(settings, [], console=env.console) == 0
    assert env.server.requests == []
    assert "already installed" in env.output()

    # A problem is explained under the table, whole.
    (env.models_dir / "summer2winter_yosemite.onnx").unlink()
    env.console.width = 80
    catalog.print_list(settings, env.console)
    listing = env.output()
    env.console.width = 200
    assert "…" not in listing and max(len(line) for line in listing.splitlines()) <= 80, listing
    assert list_rows(listing)["summer2winter_yosemite"][2] == "no, see below"
    assert " ".join(listing.split()).endswith(  # at 80 columns the note wraps between words
        " summer2winter_yosemite: summer2winter_yosemite.onnx is missing; "
        "`nstd models pull summer2winter_yosemite` fixes it"
    )

    # A broken ONNX file is caught by verify and named.
    (env.models_dir / "style_cezanne.onnx").write_bytes(b"not an onnx model")
    assert catalog.verify_all(settings, env.console) == 1
    out = env.output()
    assert "style_cezanne: FAILED" in out and "ONNX Runtime" in out


def test_resume_after_connection_dropped_mid_file(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.server.drop(f"/{VGG_FILE}", after=10_000_000)

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    requests = gets(env.server, f"/{VGG_FILE}")
    assert [r.status for r in requests] == [200, 206]
    assert requests[0].range is None
    assert requests[1].range is not None and requests[1].range.startswith("bytes=")
    assert int(requests[1].range.removeprefix("bytes=").rstrip("-")) > 0
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256
    assert "connection dropped" in env.output()


def test_resume_a_part_file_left_by_an_earlier_run(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.models_dir.mkdir()
    half = env.ckpt.vgg19.size // 2
    with env.ckpt.vgg19.path.open("rb") as handle:
        (env.models_dir / f"{VGG_FILE}.part").write_bytes(handle.read(half))

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    requests = gets(env.server, f"/{VGG_FILE}")
    assert [(r.range, r.status) for r in requests] == [(f"bytes={half}-", 206)]
    assert f"resumed an earlier download at {half} bytes" in env.output()
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256


def test_a_complete_part_file_is_finished_without_downloading_again(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.models_dir.mkdir()
    (env.models_dir / f"{VGG_FILE}.part").write_bytes(env.ckpt.vgg19.path.read_bytes())

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    requests = gets(env.server, f"/{VGG_FILE}")
    assert [(r.range, r.status) for r in requests] == [(f"bytes={env.ckpt.vgg19.size}-", 416)]
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256


def test_server_without_range_support_restarts_from_zero(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.server.drop(f"/{VGG_FILE}", after=5_000_000)
    env.server.ignore_range(f"/{VGG_FILE}")

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    requests = gets(env.server, f"/{VGG_FILE}")
    assert [r.status for r in requests] == [200, 200]
    assert requests[1].range is not None  # asked to resume, got the whole file, started over
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256


def test_wrong_sha256_is_refused_and_nothing_is_installed(env: Env) -> None:
    wrong = "0" * 64
    settings = env.settings(env.vgg_entry(sha256=wrong))

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, ["vgg19"], console=env.console)

    message = caught.value.message
    assert wrong in message and env.ckpt.vgg19.sha256 in message
    assert "nothing was installed" in message
    assert env.model_files() == []  # no manifest, no .part, no model file


def test_404_gives_a_clear_message(env: Env) -> None:
    settings = env.settings(env.vgg_entry(url=env.server.url("/missing/vgg19.pth")))

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, ["vgg19"], console=env.console)

    message = caught.value.message
    assert "vgg19: not found at http://127.0.0.1:" in message
    assert "(HTTP 404)" in message
    assert "--mirror" in message and "nstd models import vgg19" in message
    assert len(env.server.requests) == 1  # a 404 is not retried
    assert env.model_files() == []


def test_503_then_success_is_retried(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.server.fail(f"/{VGG_FILE}", 503, times=2)

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    assert [r.status for r in gets(env.server, f"/{VGG_FILE}")] == [503, 503, 200]
    assert "HTTP 503" in env.output()
    assert "vgg19" in read_manifest(env.models_dir)


def test_persistent_5xx_gives_up_and_keeps_nothing_installed(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(download, "MAX_ATTEMPTS", 3)
    settings = env.settings(env.vgg_entry())
    env.server.fail(f"/{VGG_FILE}", 502)

    with pytest.raises(NstdError, match=r"giving up .* after 3 failed attempts: HTTP 502") as caught:
        catalog.pull(settings, ["vgg19"], console=env.console)
    assert "Offline?" not in caught.value.message  # the server answered: this machine is online
    assert env.model_files() == []  # not even an empty .part


def test_an_offline_pull_says_how_to_get_the_exact_files_another_way(env: Env) -> None:
    with socket.socket() as probe:  # a loopback port where nothing listens: every connection is refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    vgg = env.vgg_entry(url=f"{dead}/{VGG_FILE}")
    monet = env.cyclegan_entry("style_monet", url=f"{dead}/style_monet.pth")
    settings = env.settings(vgg, monet)

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, ["vgg19"], console=env.console)
    message = caught.value.message
    assert message.startswith(f"vgg19: giving up on {dead}/{VGG_FILE} after 6 failed attempts")
    assert message.endswith(
        f". Offline? Download {VGG_FILE} ({dead}/{VGG_FILE}) on a machine with internet access, then "
        "either serve it under one URL with the same file name and run `nstd models pull --mirror URL`, "
        f"or copy it here and run `nstd models import vgg19 {VGG_FILE}`"
    )

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, [], console=env.console)
    assert caught.value.message.endswith(
        f". Offline? Download {VGG_FILE} ({dead}/{VGG_FILE}), style_monet.pth ({dead}/style_monet.pth) on a "
        "machine with internet access, then either serve them under one URL with the same file names and "
        "run `nstd models pull --mirror URL`, or copy them here and run "
        f"`nstd models import vgg19 {VGG_FILE}`; `nstd models import style_monet style_monet.pth`"
    )
    assert env.model_files() == []


def test_giving_up_keeps_the_partial_file_for_the_next_run(env: Env, monkeypatch) -> None:
    settings = env.settings(env.vgg_entry())
    env.server.drop(f"/{VGG_FILE}", after=5_000_000)
    monkeypatch.setattr(download, "MAX_ATTEMPTS", 1)
    with pytest.raises(NstdError, match="run the pull again to resume from 5000000 bytes"):
        catalog.pull(settings, ["vgg19"], console=env.console)
    assert env.model_files() == [f"{VGG_FILE}.part"]

    monkeypatch.setattr(download, "MAX_ATTEMPTS", 6)
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert gets(env.server, f"/{VGG_FILE}")[-1].range == "bytes=5000000-"
    assert env.model_files() == ["manifest.json", VGG_FILE]


def test_any_pull_removes_the_stale_temporary_files_of_killed_pulls(env: Env) -> None:
    entries = [env.vgg_entry()] + [
        env.cyclegan_entry(name) for name in ("style_monet", "style_cezanne", "style_ukiyoe")
    ]
    settings = env.settings(*entries)
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    env.output()
    junk = {
        f"{VGG_FILE}.part": 3_000_000,  # its model is installed: nothing will resume it
        ".style_monet.onnx.part-k2j4x9.tmp": 2_000_000,  # an ONNX export killed midway
        "style_monet.onnx.part": 1_000_000,
        "style_monet.pth.import.part": 1_000_000,
        ".manifest.json.a8b7c6.tmp": 100,
    }
    kept = {
        "style_cezanne.pth.part": 500_000,  # a download of a model not installed: the next pull resumes it
        ".style_ukiyoe.onnx.part-busy.tmp": 500_000,  # another nstd holds this model's lock: in use
    }
    for name, size in {**junk, **kept}.items():
        (env.models_dir / name).write_bytes(b"x" * size)

    with download.file_lock(catalog._lock_path(env.models_dir, "style_ukiyoe.pth")):
        assert catalog.pull(settings, ["vgg19"], console=env.console) == 0  # already installed: a no-op
    out = env.output()

    assert "removed 5 stale temporary files (7.0 MB) left by an interrupted pull or import" in out
    assert env.model_files() == sorted(["manifest.json", VGG_FILE, *kept])
    # Once the other nstd let go, its leftover is stale too; the resumable download stays.
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert "removed 1 stale temporary file (500.0 kB)" in env.output()
    assert env.model_files() == sorted(["manifest.json", VGG_FILE, "style_cezanne.pth.part"])
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert "stale" not in env.output()  # nothing left to remove: nothing said


def test_stalled_connection_times_out_and_resumes(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(download, "STALL_TIMEOUT", 0.3)
    settings = env.settings(env.vgg_entry())
    env.server.stall(f"/{VGG_FILE}", after=3_000_000, seconds=5)

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    requests = gets(env.server, f"/{VGG_FILE}")
    assert [r.status for r in requests] == [200, 206]
    assert "stalled connection" in env.output()


def test_wrong_shapes_are_refused_and_nothing_is_installed(env: Env) -> None:
    bad = env.ckpt.bad_shapes
    settings = env.settings(env.vgg_entry(bad))

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, ["vgg19"], console=env.console)

    assert "features.0.weight has shape (64, 3, 5, 5), expected (64, 3, 3, 3)" in caught.value.message
    assert env.model_files() == []


def test_legacy_instancenorm_keys_are_accepted(env: Env) -> None:
    settings = env.settings(env.cyclegan_entry("style_monet", env.ckpt.cyclegan_legacy))

    assert catalog.pull(settings, ["style_monet"], console=env.console) == 0

    record = read_manifest(env.models_dir)["style_monet"]
    assert record.sha256 == env.ckpt.cyclegan_legacy.sha256
    assert (env.models_dir / "style_monet.onnx").is_file()
    assert any("ONNX export" in note for note in record.notes)


def test_pulling_several_continues_past_a_failure(env: Env) -> None:
    settings = env.settings(
        env.vgg_entry(),
        env.cyclegan_entry("style_monet", url=env.server.url("/gone/style_monet.pth")),
    )

    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, [], console=env.console)

    assert caught.value.message.startswith("1 of 2 models failed: style_monet (not found at")
    assert set(read_manifest(env.models_dir)) == {"vgg19"}
    summary = env.output().split("summary", 1)[1]
    assert "vgg19" in summary and "installed" in summary and "failed" in summary


def test_force_downloads_again(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    first = read_manifest(env.models_dir)["vgg19"]

    env.server.clear_log()
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert gets(env.server, f"/{VGG_FILE}") == []

    assert catalog.pull(settings, ["vgg19"], force=True, console=env.console) == 0
    assert [r.status for r in gets(env.server, f"/{VGG_FILE}")] == [200]
    second = read_manifest(env.models_dir)["vgg19"]
    assert second.sha256 == first.sha256 and second.installed_at > first.installed_at


def test_a_missing_or_resized_file_is_pulled_again(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    with (env.models_dir / VGG_FILE).open("ab") as handle:
        handle.write(b"x")
    env.server.clear_log()

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0

    assert len(gets(env.server, f"/{VGG_FILE}")) == 1
    assert (env.models_dir / VGG_FILE).stat().st_size == env.ckpt.vgg19.size


def test_mirror_replaces_the_base_url_and_keeps_file_names(env: Env) -> None:
    env.server.add_file(f"/mirror/{VGG_FILE}", env.ckpt.vgg19.path)
    settings = env.settings(env.vgg_entry(url="https://upstream.invalid/models/vgg19-dcbb9e9d.pth"))

    assert catalog.pull(settings, ["vgg19"], mirror=env.server.url("/mirror/"), console=env.console) == 0

    assert [r.path for r in env.server.requests] == [f"/mirror/{VGG_FILE}"]
    assert read_manifest(env.models_dir)["vgg19"].source == env.server.url(f"/mirror/{VGG_FILE}")


def test_mirror_from_settings(env: Env) -> None:
    env.server.add_file(f"/lan/{VGG_FILE}", env.ckpt.vgg19.path)
    entry = env.vgg_entry(url="https://upstream.invalid/vgg19-dcbb9e9d.pth")
    settings = env.settings(entry, mirror=env.server.url("/lan"))

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert [r.path for r in env.server.requests] == [f"/lan/{VGG_FILE}"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/vgg19-dcbb9e9d.pth"])
def test_only_http_and_https_urls_are_allowed(env: Env, url: str) -> None:
    settings = env.settings(env.vgg_entry(url=url))
    with pytest.raises(NstdError, match="only http:// and https:// URLs are allowed"):
        catalog.pull(settings, ["vgg19"], console=env.console)
    with pytest.raises(NstdError, match="is not an http:// or https:// URL"):
        catalog.pull(settings, ["vgg19"], mirror="ftp://127.0.0.1/models", console=env.console)
    assert env.server.requests == []
    assert env.model_files() == []


def test_size_cap_refuses_an_announced_oversized_file(env: Env) -> None:
    size = env.ckpt.vgg19.size
    settings = env.settings(env.vgg_entry(size=int(size / 1.6)))

    with pytest.raises(NstdError, match=r"over the .*-byte cap"):
        catalog.pull(settings, ["vgg19"], console=env.console)
    assert env.model_files() == []


def test_size_cap_aborts_a_stream_without_content_length(env: Env) -> None:
    size = env.ckpt.vgg19.size
    settings = env.settings(env.vgg_entry(size=int(size / 1.6)))
    env.server.omit_length(f"/{VGG_FILE}")

    with pytest.raises(NstdError, match=r"sent more than the .*-byte cap"):
        catalog.pull(settings, ["vgg19"], console=env.console)
    assert env.model_files() == []


def test_stream_without_content_length_within_the_cap_installs(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    env.server.omit_length(f"/{VGG_FILE}")

    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert read_manifest(env.models_dir)["vgg19"].size == env.ckpt.vgg19.size


def test_unknown_model_names_the_catalog(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    with pytest.raises(NstdError, match=r"unknown model nope; the catalog has: vgg19"):
        catalog.pull(settings, ["nope"], console=env.console)


def test_concurrent_pulls_in_threads_install_once(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    gate = env.server.hold(f"/{VGG_FILE}")  # the first pull stays mid-download until we let it go
    results: dict[str, object] = {}
    outputs = {name: io.StringIO() for name in ("first", "second")}

    def worker(name: str) -> None:
        console = Console(file=outputs[name], width=200)
        try:
            results[name] = catalog.pull(settings, ["vgg19"], console=console)
        except Exception as exc:  # reported by the assert below
            results[name] = exc

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    wait_for(lambda: gets(env.server, f"/{VGG_FILE}"), "the first pull's request")
    second = threading.Thread(target=worker, args=("second",))
    second.start()
    wait_for(lambda: "waiting" in outputs["second"].getvalue(), "the second pull to wait for the lock")
    gate.set()
    first.join(timeout=60)
    second.join(timeout=60)

    assert results == {"first": 0, "second": 0}
    assert len(gets(env.server, f"/{VGG_FILE}")) == 1
    assert "vgg19: installed" in outputs["first"].getvalue()
    assert "already installed" in outputs["second"].getvalue()
    assert env.model_files() == ["manifest.json", VGG_FILE]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- trust on first use -------------------------------------------------------------------------------------


def test_trust_on_first_use_pins_the_digest_and_refuses_a_changed_file(env: Env) -> None:
    # A vgg19 entry without a sha256 takes the TOFU path without paying for an ONNX export.
    settings = env.settings(env.vgg_entry(sha256=None))
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    out = env.output()
    assert "trusting it on first use" in out and env.ckpt.vgg19.sha256 in out
    assert read_manifest(env.models_dir)["vgg19"].pinned == "tofu"

    # The server now serves different (still valid) bytes: a forced re-download is refused.
    env.server.add_file(f"/{VGG_FILE}", env.ckpt.bad_shapes.path)
    with pytest.raises(NstdError) as caught:
        catalog.pull(settings, ["vgg19"], force=True, console=env.console)
    assert "pinned on first use" in caught.value.message
    assert env.ckpt.vgg19.sha256 in caught.value.message
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256
    assert env.model_files() == ["manifest.json", VGG_FILE]


# --- verify -------------------------------------------------------------------------------------------------


def test_verify_with_nothing_installed_fails(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.verify_all(settings, env.console) == 1
    assert "no models installed: run `nstd models pull`" in env.output()


def test_verify_names_a_model_whose_file_was_altered(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert catalog.verify_all(settings, env.console) == 0
    env.output()

    path = env.models_dir / VGG_FILE
    with path.open("r+b") as handle:  # same size, one byte changed
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))

    assert catalog.verify_all(settings, env.console) == 1
    out = env.output()
    assert "vgg19: FAILED" in out and f"expected {env.ckpt.vgg19.sha256}" in out
    assert "verify failed for 1 of 1 models: vgg19" in out


def test_verify_rehashes_the_onnx_export_which_still_loads_when_altered(env: Env) -> None:
    settings = env.settings(env.cyclegan_entry("style_monet"))
    assert catalog.pull(settings, ["style_monet"], console=env.console) == 0
    record = read_manifest(env.models_dir)["style_monet"]
    onnx = env.models_dir / record.runnable
    assert record.built_sha256 == {record.runnable: hashlib.sha256(onnx.read_bytes()).hexdigest()}
    assert catalog.verify_all(settings, env.console) == 0
    env.output()

    with onnx.open("r+b") as handle:  # one bit in the middle of the exported weights
        handle.seek(onnx.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, io.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert catalog._check_onnx_loads(onnx) is None  # the load check alone would pass it

    assert catalog.verify_all(settings, env.console) == 1
    out = " ".join(env.output().split())  # the console wraps long lines
    assert f"style_monet: FAILED: {record.runnable} has sha256" in out
    assert f"expected {record.built_sha256[record.runnable]} (built at install)" in out


def test_verify_accepts_a_manifest_from_before_onnx_digests(env: Env) -> None:
    settings = env.settings(env.cyclegan_entry("style_monet"))
    assert catalog.pull(settings, ["style_monet"], console=env.console) == 0
    manifest = env.models_dir / "manifest.json"
    raw = json.loads(manifest.read_text())
    del raw["models"]["style_monet"]["built_sha256"]
    manifest.write_text(json.dumps(raw))

    assert read_manifest(env.models_dir)["style_monet"].built_sha256 == {}
    assert catalog.verify_all(settings, env.console) == 0
    assert "style_monet: ok" in env.output()


def test_verify_names_a_missing_file(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    (env.models_dir / VGG_FILE).unlink()
    assert catalog.verify_all(settings, env.console) == 1
    assert f"vgg19: FAILED: {VGG_FILE} is missing" in env.output()
    assert not catalog.installed_status(settings)[0].installed


# --- import -------------------------------------------------------------------------------------------------


def test_import_a_local_file(env: Env) -> None:
    settings = env.settings(env.vgg_entry())

    record = catalog.import_file(settings, "vgg19", env.ckpt.vgg19.path, console=env.console)

    assert record.pinned == "catalog"  # its digest is the catalog's
    assert record.source == env.ckpt.vgg19.path.resolve().as_uri()
    assert read_manifest(env.models_dir)["vgg19"].sha256 == env.ckpt.vgg19.sha256
    assert env.model_files() == ["manifest.json", VGG_FILE]
    assert env.server.requests == []
    assert catalog.verify_all(settings, env.console) == 0


def test_import_with_a_different_digest_warns_naming_both(env: Env) -> None:
    published = "ab" * 32
    settings = env.settings(env.vgg_entry(sha256=published))

    record = catalog.import_file(settings, "vgg19", env.ckpt.vgg19.path, console=env.console)

    out = env.output()
    assert "warning" in out and published in out and env.ckpt.vgg19.sha256 in out
    assert record.pinned == "import" and record.sha256 == env.ckpt.vgg19.sha256
    # The import pin survives: a later pull does not replace the imported file.
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    assert env.server.requests == []
    assert catalog.verify_all(settings, env.console) == 0


def test_import_of_an_invalid_file_installs_nothing(env: Env, tmp_path: Path) -> None:
    settings = env.settings(env.vgg_entry())
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")

    with pytest.raises(NstdError) as caught:
        catalog.import_file(settings, "vgg19", junk, console=env.console)
    # Named as the user knows it, not by its staging copy.
    assert caught.value.message.startswith(f"{junk} is not a PyTorch checkpoint nstd can load (torch cannot")
    pickled = tmp_path / "pickled.pth"
    torch.save({"ratio": fractions.Fraction(1, 3)}, pickled)  # a Python object beside the tensors
    with pytest.raises(NstdError) as caught:
        catalog.import_file(settings, "vgg19", pickled, console=env.console)
    assert "holds pickled Python objects, not only tensors" in caught.value.message
    assert "fractions.Fraction" in caught.value.message
    # torch's advice (turn weights_only off, or allowlist the class) is not passed on.
    assert "weights_only" not in caught.value.message and "safe_globals" not in caught.value.message
    with pytest.raises(NstdError, match=r"features\.0\.weight has shape"):
        catalog.import_file(settings, "vgg19", env.ckpt.bad_shapes.path, console=env.console)
    assert env.model_files() == []


def test_import_errors_name_the_problem(env: Env, tmp_path: Path) -> None:
    settings = env.settings(env.vgg_entry())
    with pytest.raises(NstdError, match=r"unknown model style_picasso; the catalog has: vgg19"):
        catalog.import_file(settings, "style_picasso", env.ckpt.vgg19.path, console=env.console)
    with pytest.raises(NstdError, match=r"absent\.pth: no such file"):
        catalog.import_file(settings, "vgg19", tmp_path / "absent.pth", console=env.console)


def third_party_generator(blocks: range = range(10, 19)) -> dict[str, torch.Tensor]:
    """A CycleGAN generator as other CycleGAN code saves it (the layout of the `vintagify` package's
    G_A2B_epoch33.pth): upstream's convolution shapes, but InstanceNorm layers with affine weights and the
    residual blocks' layers under `block` instead of `conv_block`."""
    state = {
        key.replace(".conv_block.", ".block."): torch.zeros(shape)
        for key, shape in cyclegan_shapes().items()
        if ".conv_block." not in key or int(key.split(".")[1]) in blocks
    }
    norms = [(f"model.{index}", size) for index, size in ((2, 64), (5, 128), (8, 256), (20, 128), (23, 64))]
    norms += [(f"model.{block}.block.{n}", 256) for block in blocks for n in (2, 6)]
    for prefix, size in norms:
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = torch.ones(size), torch.zeros(size)
    return state


def test_a_third_party_cyclegan_checkpoint_is_refused_saying_what_it_is(env: Env, tmp_path: Path) -> None:
    settings = env.settings(env.cyclegan_entry("style_monet"))
    foreign = tmp_path / "G_A2B_epoch33.pth"
    torch.save(third_party_generator(), foreign)
    with pytest.raises(NstdError) as caught:
        catalog.import_file(settings, "style_monet", foreign, console=env.console)
    assert caught.value.message == (
        "InstanceNorm with affine weights and `block` instead of `conv_block`: not the "
        "pytorch-CycleGAN-and-pix2pix resnet_9blocks layout; nothing was installed"
    )
    assert env.model_files() == []


def test_other_foreign_generator_layouts_are_described() -> None:
    from nst_daemon.engines.checkpoint import describe_foreign_generator

    upstream = {key: torch.zeros(shape) for key, shape in cyclegan_shapes().items()}
    assert describe_foreign_generator(upstream) is None  # the key check decides, and passes
    assert describe_foreign_generator({f"module.{key}": value for key, value in upstream.items()}) is None
    six = {
        key: value
        for key, value in upstream.items()
        if not key.startswith(("model.16.", "model.17.", "model.18."))
    }
    assert describe_foreign_generator(six) == (
        "6 residual blocks (resnet_6blocks): not the pytorch-CycleGAN-and-pix2pix resnet_9blocks layout"
    )
    batch = {**upstream, "model.2.weight": torch.ones(64), "model.2.bias": torch.zeros(64)}
    batch["model.2.running_mean"] = torch.zeros(64)
    assert describe_foreign_generator(batch).startswith("BatchNorm (affine weights and running statistics):")
    wrapped = describe_foreign_generator({"G_A2B": upstream, "epoch": torch.tensor(33)})
    assert wrapped.startswith(
        "a checkpoint that wraps other dictionaries (G_A2B), not a generator's state_dict()"
    )
    renamed = describe_foreign_generator(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "res1.conv.weight": torch.zeros(8, 8, 3, 3)}
    )
    assert renamed.startswith("layers named conv1, res1 instead of model.N:")


# --- the catalog itself -------------------------------------------------------------------------------------


def test_the_shipped_catalog_matches_the_design() -> None:
    entries = catalog.load_catalog(catalog.default_catalog_path())
    assert list(entries) == ["vgg19", *CYCLEGAN_NAMES, "adain_vgg", "adain_decoder"]
    for name, file in (("adain_vgg", "vgg_normalised.pth"), ("adain_decoder", "decoder.pth")):
        entry = entries[name]
        assert entry.kind == name and entry.sha256 is None and entry.runnable == f"{name}.onnx"
        assert entry.url == f"https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/{file}"
    vgg = entries["vgg19"]
    assert vgg.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert vgg.size == 574_673_361 and vgg.size_exact
    assert vgg.sha256 == "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"
    assert vgg.runnable == VGG_FILE
    for name, style in CYCLEGAN_NAMES.items():
        entry = entries[name]
        assert entry.kind == "cyclegan" and entry.style == style and entry.sha256 is None
        assert entry.url == f"http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/{name}.pth"
        assert entry.file == f"{name}.pth" and entry.runnable == f"{name}.onnx"
        assert 45_000_000 < entry.size < 46_000_000 and not entry.size_exact
    assert entries["style_monet"].url_for("http://lan:8080/nstd/") == "http://lan:8080/nstd/style_monet.pth"


def test_default_settings_use_the_shipped_catalog() -> None:
    assert catalog.catalog_path(Settings()) == catalog.default_catalog_path()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no [[models]] entries"),
        ("[[models]]\nname = 'x'\n", "missing key 'kind'"),
        (
            "[[models]]\nname='x'\nkind='resnet'\nurl='http://a/x'\nfile='x.pth'\nsize=1\n",
            "kind must be one of vgg19, cyclegan",
        ),
        (
            "[[models]]\nname='x'\nkind='vgg19'\nurl='http://a/x'\nfile='../x.pth'\nsize=1\n",
            "file must be a plain file name",
        ),
        (
            "[[models]]\nname='x'\nkind='vgg19'\nurl='http://a/x'\nfile='x.pth'\nsize=1\nsha256='abc'\n",
            "sha256 must be 64 hex digits",
        ),
        (
            "[[models]]\nname='x'\nkind='vgg19'\nurl='http://a/x'\nfile='x.pth'\nsize=1\nmd5='abc'\n",
            "unknown key 'md5'",
        ),
    ],
)
def test_a_malformed_catalog_is_reported(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(catalog.CatalogError, match=problem.replace("[", r"\[")):
        catalog.load_catalog(path)


def test_a_missing_catalog_is_reported(tmp_path: Path) -> None:
    settings = Settings.model_validate({"models": {"catalog": str(tmp_path / "nope.toml")}})
    with pytest.raises(catalog.CatalogError, match=r"nope\.toml not found"):
        catalog.installed_status(settings)


def test_manifest_is_valid_json_with_every_field(env: Env) -> None:
    settings = env.settings(env.vgg_entry())
    assert catalog.pull(settings, ["vgg19"], console=env.console) == 0
    raw = json.loads((env.models_dir / "manifest.json").read_text())
    entry = raw["models"]["vgg19"]
    assert entry["source"] == env.server.url(f"/{VGG_FILE}")
    assert entry["size"] == env.ckpt.vgg19.size
    assert entry["files"] == [VGG_FILE] and entry["runnable"] == VGG_FILE
    assert entry["installed_at"] > 0
