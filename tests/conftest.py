"""Shared fixtures: random-init models installed in the upstream formats, configs, and a daemon harness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NSTD = str(Path(sys.executable).parent / "nstd")
CYCLEGAN_MODELS = (
    "style_monet",
    "style_cezanne",
    "style_ukiyoe",
    "style_vangogh",
    "summer2winter_yosemite",
    "winter2summer_yosemite",
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toml_config import write_config  # noqa: E402  (re-exported: tests import it from conftest)


@pytest.fixture(scope="session")
def installed_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with all seven models installed from random-init checkpoints (one ONNX export)."""
    from checkpoints import make_cyclegan_state_dict, make_vgg19_state_dict, save_checkpoint

    from nst_daemon.engines.cyclegan import export_onnx
    from nst_daemon.manifest import InstalledModel, write_manifest

    models = tmp_path_factory.mktemp("models")
    vgg = save_checkpoint(make_vgg19_state_dict(seed=0), models / "vgg19-dcbb9e9d.pth")
    generator = save_checkpoint(make_cyclegan_state_dict(seed=1), models / "generator.pth")
    onnx = models / "generator.onnx"
    export_onnx(generator, onnx)
    now = time.time()
    entries = {
        "vgg19": InstalledModel(
            name="vgg19",
            kind="vgg19",
            sha256="0" * 64,
            size=vgg.stat().st_size,
            source="test",
            installed_at=now,
            files=[vgg.name],
            runnable=vgg.name,
            pinned="import",
        )
    }
    for name in CYCLEGAN_MODELS:
        shutil.copyfile(onnx, models / f"{name}.onnx")
        entries[name] = InstalledModel(
            name=name,
            kind="cyclegan",
            sha256="0" * 64,
            size=generator.stat().st_size,
            source="test",
            installed_at=now,
            files=[f"{name}.onnx"],
            runnable=f"{name}.onnx",
            pinned="import",
        )
    write_manifest(models, entries)
    return models


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image `imaging.load_image` decodes in this process while the test runs."""
    from nst_daemon import imaging

    sizes: list[tuple[int, int]] = []
    real_load = imaging.load_image

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        image = real_load(*args, **kwargs)
        sizes.append(image.size)
        return image

    monkeypatch.setattr(imaging, "load_image", recording_load)
    return sizes


@pytest.fixture
def daemon_config(tmp_path: Path, installed_models_dir: Path) -> Callable[..., Path]:
    """Write a config.toml for a daemon under tmp_path with tiny sizes; sections override the defaults."""

    def make(**sections: dict[str, Any]) -> Path:
        base: dict[str, dict[str, Any]] = {
            "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(installed_models_dir)},
            "nst": {"preset": "fast", "max_side": 64},
            "cyclegan": {"max_side": 64},
            "watch": {"enabled": False, "dir": str(tmp_path / "watch"), "settle_s": 0.2},
            "daemon": {"grace_period_s": 5, "log_level": "info"},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        return write_config(tmp_path / "config.toml", base)

    return make


class DaemonProcess:
    """`nstd run` as a subprocess, with its log collected for assertions and debugging."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in (env or {}) else None
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.arrivals: list[float] = []  # time.monotonic() as each line was read, for timing failures
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        return [NSTD, "--config", str(self.config), "run"]

    def start(self, wait_for: str | None = "nstd is running", timeout: float = 60) -> DaemonProcess:
        # Each run gets its own list: output a killed run's orphans still write must not land in the next.
        self.lines = lines = []
        self.arrivals = []
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self.proc, lines, self.arrivals), daemon=True
        )
        self._reader.start()
        if wait_for:
            self.wait_for_log(wait_for, timeout)
        return self

    def _read(self, proc: subprocess.Popen[str], lines: list[str], arrivals: list[float]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            arrivals.append(time.monotonic())
            lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def log_since(self, started: float) -> str:
        """The log with each line's arrival in seconds after `started` (a time.monotonic())."""
        return "\n".join(
            f"{arrival - started:+8.2f} s  {line}"
            for arrival, line in zip(self.arrivals, self.lines, strict=False)
        )

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {text!r}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {text!r} in the daemon log:\n{self.log}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(5)
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait(10)


@pytest.fixture
def daemon_process() -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(config, env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.05, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


# The modules that take longest (minutes: Ray clusters, real daemons, NST runs) go first, so that with
# several xdist workers (scripts/test, --dist loadfile) none of them starts last and holds up the end.
# Only the order changes; every test is independent of it.
LONGEST_MODULES = (
    "test_cluster_daemon.py",
    "test_cluster_ray.py",
    "test_engine_process.py",
    "test_daemon.py",
    "test_stylize_cli.py",
    "test_bot_e2e.py",
    "test_benchmarks.py",
    "test_catalog.py",
    "test_chaos.py",
    "test_jobs.py",
    "test_watch.py",
    "test_first_run.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: within a module, and among the rest, the order stays as collected
