"""`nstd models ...` end to end: a config file, the real CLI entry point, a loopback HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_fixture import CheckpointSet, FileServer, checkpoint_set, write_catalog
from rich.console import Console

from nst_daemon import cli, download
from nst_daemon.backoff import Backoff
from nst_daemon.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
VGG_FILE = "vgg19-dcbb9e9d.pth"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> CheckpointSet:
    return checkpoint_set(tmp_path_factory.getbasetemp() / "checkpoints")


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


@pytest.fixture
def config(tmp_path: Path, server: FileServer, ckpt: CheckpointSet) -> Path:
    server.add_file(f"/{VGG_FILE}", ckpt.vgg19.path)
    write_catalog(
        tmp_path / "catalog.toml",
        [
            {
                "name": "vgg19",
                "kind": "vgg19",
                "url": server.url(f"/{VGG_FILE}"),
                "file": VGG_FILE,
                "size": ckpt.vgg19.size,
                "sha256": ckpt.vgg19.sha256,
            },
            {
                "name": "style_monet",
                "kind": "cyclegan",
                "style": "monet",
                "url": server.url("/missing/style_monet.pth"),
                "file": "style_monet.pth",
                "size": 45_575_000,
                "size_exact": False,
            },
        ],
    )
    path = tmp_path / "config.toml"
    # Relative paths in a config file are relative to the file.
    path.write_text(
        '[paths]\nmodels_dir = "models"\nstate_dir = "state"\n\n[models]\ncatalog = "catalog.toml"\n'
    )
    return path


@pytest.fixture
def nstd(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Path):
    """Run the console-script entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(download, "RETRY", Backoff.exponential(0.01, 30.0, max_retry_after=60.0))
    monkeypatch.setattr(cli, "console", Console(width=200, color_system=None))
    for name in [name for name in os.environ if name.startswith("NSTD_")]:
        monkeypatch.delenv(name)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(cli.state, "settings", None)
        monkeypatch.setattr(sys, "argv", ["nstd", "--config", str(config), *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        captured = capsys.readouterr()
        return exited.value.code or 0, captured.out, captured.err

    return run


def test_pull_list_verify_cycle(nstd, config: Path, server: FileServer, ckpt: CheckpointSet) -> None:
    code, out, _ = nstd("models", "list")
    assert code == 0
    vgg_row = next(line for line in out.splitlines() if line.startswith("vgg19 "))
    assert " no " in vgg_row and ckpt.vgg19.sha256[:12] in vgg_row

    code, out, err = nstd("models", "verify")
    assert code == 1 and "no models installed: run `nstd models pull`" in out

    code, out, err = nstd("models", "pull", "vgg19")
    assert (code, err) == (0, "")
    assert "vgg19: installed" in out

    code, out, _ = nstd("models", "list")
    vgg_row = next(line for line in out.splitlines() if line.startswith("vgg19 "))
    assert " yes, catalog " in vgg_row
    monet_row = next(line for line in out.splitlines() if line.startswith("style_monet "))
    assert " no " in monet_row and "~45.6 MB" in monet_row

    server.clear_log()
    code, out, _ = nstd("models", "pull", "vgg19")
    assert code == 0 and "already installed" in out
    assert server.requests == []

    code, out, _ = nstd("models", "pull", "vgg19", "--force")
    assert code == 0 and len(server.requests_for(f"/{VGG_FILE}")) == 1

    code, out, _ = nstd("models", "verify")
    assert code == 0 and "vgg19: ok" in out

    models_dir = config.parent / "models"
    with (models_dir / VGG_FILE).open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00\x01\x02\x03")
    code, out, _ = nstd("models", "verify")
    assert code == 1 and "vgg19: FAILED" in out


def test_pull_failures_exit_non_zero_with_one_line(nstd) -> None:
    code, out, err = nstd("models", "pull", "style_monet")
    assert code == 1
    assert err.count("\n") == 1
    assert "error: style_monet: not found at http://127.0.0.1:" in err
    assert "(HTTP 404); try --mirror URL or `nstd models import style_monet FILE`" in err

    code, out, err = nstd("models", "pull")
    assert code == 1
    assert "1 of 2 models failed: style_monet" in err
    assert "summary" in out

    code, _, err = nstd("models", "pull", "nosuch")
    assert code == 1 and "unknown model nosuch; the catalog has: vgg19, style_monet" in err

    code, _, err = nstd("models", "pull", "vgg19", "--mirror", "ftp://127.0.0.1/m")
    assert code == 1 and "is not an http:// or https:// URL" in err


def test_import_from_the_command_line(nstd, config: Path, ckpt: CheckpointSet, tmp_path: Path) -> None:
    code, out, err = nstd("models", "import", "vgg19", str(ckpt.vgg19.path))
    assert (code, err) == (0, "")
    assert "vgg19: installed" in out
    assert read_manifest(config.parent / "models")["vgg19"].pinned == "catalog"

    code, _, err = nstd("models", "import", "vgg19", str(tmp_path / "nope.pth"))
    assert code == 1 and "nope.pth: no such file" in err

    code, _, err = nstd("models", "import", "style_picasso", str(ckpt.vgg19.path))
    assert code == 1 and "unknown model style_picasso" in err


def test_two_processes_pulling_one_model_install_it_once(
    config: Path, server: FileServer, ckpt: CheckpointSet
) -> None:
    gate = server.hold(f"/{VGG_FILE}")  # the first process stays mid-download until we let it go
    env = {name: value for name, value in os.environ.items() if not name.startswith("NSTD_")}
    env["PYTHONUNBUFFERED"] = "1"  # so that we can watch the second one reach the lock
    command = [sys.executable, "-c", "from nst_daemon.cli import main; main()", "--config", str(config)]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*command, "models", "pull", "vgg19"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = start()
    deadline = time.monotonic() + 60
    while not server.requests_for(f"/{VGG_FILE}"):
        assert first.poll() is None and time.monotonic() < deadline, "the first pull never downloaded"
        time.sleep(0.02)
    second = start()
    assert second.stdout is not None
    seen = []
    for line in second.stdout:  # blocks until the second process prints "waiting"
        seen.append(line)
        if "waiting" in line:
            break
    gate.set()
    first_out, _ = first.communicate(timeout=120)
    second_rest, _ = second.communicate(timeout=120)
    second_out = "".join(seen) + second_rest

    assert (first.returncode, second.returncode) == (0, 0), (first_out, second_out)
    assert len(server.requests_for(f"/{VGG_FILE}")) == 1
    assert "vgg19: installed" in first_out
    assert "waiting for it to finish" in second_out and "already installed" in second_out
    models_dir = config.parent / "models"
    assert sorted(p.name for p in models_dir.iterdir()) == [".locks", "manifest.json", VGG_FILE]
    assert read_manifest(models_dir)["vgg19"].sha256 == ckpt.vgg19.sha256
