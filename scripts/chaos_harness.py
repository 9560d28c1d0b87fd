"""The chaos suite's machinery: a supervised `nstd run` subprocess, its memory sampled, models and photos.

`Daemon` plays systemd: it starts `nstd --config <tmp> run`, restarts it after a non-zero exit
(Restart=on-failure) but not after a clean exit 0, and SIGKILLs it on request. A sampler thread reads
/proc every 0.1 s for the daemon process (VmHWM, so its peak is exact up to the last sample before a kill)
and its descendants (the engine process). After each SIGKILL it checks, a second later, whether the
killed daemon's engine child is still alive: a stale engine beside the next daemon.
Every process the harness ends is ended by its pid, after checking its start time is still the one seen.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # fake_telegram.py, checkpoints.py, toml_config.py live there

NSTD = str(Path(sys.executable).parent / "nstd")
STYLE = "monet"
SAMPLE_S = 0.1
STALE_CHECK_S = 1.0  # issue 19: the engine child dies with its parent within a second


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of `pid`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start


def kill_exact(pid: int, start: int) -> None:
    """SIGKILL a process we started (directly or through the daemon), only if it is still that process."""
    if alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Daemon:
    def __init__(self, config: Path, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **(env or {}),
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills: list[float] = []  # monotonic times of our SIGKILLs
        self.unexpected_exits: list[int] = []  # exit codes we did not cause
        self.stale_engines = 0  # engine children alive STALE_CHECK_S after their daemon's SIGKILL
        self.peak_daemon_mb = 0.0  # the daemon process itself (VmHWM)
        self.peak_engine_mb = 0.0  # its descendants (VmHWM of each)
        self.peak_tree_mb = 0.0  # daemon + descendants, VmRSS summed per sample
        self.seen: dict[int, int] = {}  # every descendant pid -> start time, to clean up at the end
        self.restart_on_failure = True
        self._lock = threading.RLock()
        self._expected_exit = False
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="chaos-sampler", daemon=True)

    # --- lifecycle ---

    def start(self, wait: bool = True, timeout: float = 120) -> None:
        with self._lock:
            self.starts += 1
            log = open(self.log_dir / f"daemon-{self.starts}.log", "wb")  # noqa: SIM115 (the child owns it)
            self.proc = subprocess.Popen(
                [NSTD, "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log_dir,
            )
            log.close()
            self._expected_exit = False
        if not self._sampler.is_alive():
            self._sampler.start()
        if wait:
            self.wait_running(timeout)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"daemon-{self.starts}.log"

    def log_text(self) -> str:
        return "\n".join(
            (self.log_dir / f"daemon-{n}.log").read_text(errors="replace") for n in range(1, self.starts + 1)
        )

    def running(self) -> bool:
        """Alive and past start-up: it logged "nstd is running"."""
        return self.alive() and b"nstd is running" in self.log_path.read_bytes()

    def wait_running(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return True
            code = self.proc.poll() if self.proc is not None else None
            if code is not None and (code == 0 or not self.restart_on_failure):
                return False  # exited, and no restart is coming (systemd's on-failure leaves exit 0 down)
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self) -> None:
        with self._lock:
            if not self.alive():
                return
            assert self.proc is not None
            children = descendants(self.proc.pid)
            self._expected_exit = True
            self.proc.kill()
            self.proc.wait()
            self.kills.append(time.monotonic())
        timer = threading.Timer(STALE_CHECK_S, self._count_stale, args=(children,))
        timer.daemon = True
        timer.start()

    def _count_stale(self, children: list[tuple[int, int]]) -> None:
        if any(alive(pid, start) for pid, start in children):
            with self._lock:
                self.stale_engines += 1

    def stop(self, timeout: float = 60) -> tuple[int | None, float]:
        """SIGTERM and wait: (exit code, seconds it took); None when it had to be killed."""
        with self._lock:
            self._expected_exit = True
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return (None if proc is None else proc.returncode), 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        return code, time.monotonic() - started

    def close(self) -> None:
        """Stop sampling and kill whatever is left: the daemon and every descendant ever seen."""
        self._stop.set()
        with self._lock:
            self._expected_exit = True
            if self.alive():
                assert self.proc is not None
                self.proc.kill()
                self.proc.wait()
        if self._sampler.is_alive():
            self._sampler.join(5)
        for pid, start in self.seen.items():
            kill_exact(pid, start)

    # --- the sampler: memory, and systemd's Restart=on-failure ---

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with self._lock:
                proc = self.proc
                if proc is None:
                    continue
                code = proc.poll()
                if code is not None:
                    if not self._expected_exit:
                        self.unexpected_exits.append(code)
                        self._expected_exit = True
                        if code != 0 and self.restart_on_failure:
                            self.start(wait=False)
                    continue
                self._sample(proc.pid)

    def _sample(self, pid: int) -> None:
        self.peak_daemon_mb = max(self.peak_daemon_mb, _status_mb(pid, "VmHWM"))
        total = _status_mb(pid, "VmRSS")
        for child, start in descendants(pid):
            self.seen.setdefault(child, start)
            self.peak_engine_mb = max(self.peak_engine_mb, _status_mb(child, "VmHWM"))
            total += _status_mb(child, "VmRSS")
        self.peak_tree_mb = max(self.peak_tree_mb, total)

    def reset_peaks(self) -> None:
        """Start a new peak: VmHWM back to the current RSS (Linux clear_refs "5") for the daemon and its
        children, so a later phase of a scenario gets its own peak."""
        with self._lock:
            pids = [self.proc.pid] if self.alive() and self.proc is not None else []
            pids += [pid for pid, _ in descendants(pids[0])] if pids else []
            for pid in pids:
                with contextlib.suppress(OSError):
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.peak_daemon_mb = self.peak_engine_mb = self.peak_tree_mb = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "daemon_starts": self.starts,
            "kills": len(self.kills),
            "unexpected_exits": list(self.unexpected_exits),
            "stale_engines_after_kill": self.stale_engines,
            "peak_daemon_rss_mb": round(self.peak_daemon_mb, 1),
            "peak_engine_rss_mb": round(self.peak_engine_mb, 1),
            "peak_tree_rss_mb": round(self.peak_tree_mb, 1),
        }


# --- config, models, photos ---------------------------------------------------------------------------------


def write_daemon_config(
    root: Path, models: Path, api_base: str, users: list[int], *, state_dir: Path | None = None, watch: bool
) -> Path:
    """Generous queue and per-user limits on purpose: a refusal for being busy is a clear answer, but this
    suite measures losses, so only faults should stop a photo. One engine thread: the box has 2 cores."""
    from fake_telegram import DEFAULT_TOKEN
    from toml_config import write_config

    return write_config(
        root / "config.toml",
        {
            "paths": {"state_dir": str(state_dir or root / "state"), "models_dir": str(models)},
            "telegram": {
                "token": DEFAULT_TOKEN,
                "api_base": api_base,
                "allowed_users": users,
                "rate_limit_per_minute": 1000,
                "default_style": STYLE,
            },
            "queue": {"max_pending": 1000, "per_user": 1000},
            "nst": {"preset": "fast", "max_side": 64, "cpu_threads": 1},
            "cyclegan": {"max_side": 64, "cpu_threads": 1},
            "watch": {"enabled": watch, "dir": str(root / "watch"), "settle_s": 0.3},
            "daemon": {"grace_period_s": 2, "log_level": "info"},
        },
    )


def make_models(models: Path) -> Path:
    """Random-init VGG19 and one CycleGAN generator (style_monet) in the upstream formats, installed as
    `nstd models import` would; in a subprocess, so this process never imports torch."""
    if (models / "manifest.json").exists() or (models / "style_monet.onnx").exists():
        return models
    models.mkdir(parents=True, exist_ok=True)
    code = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from pathlib import Path
from checkpoints import install_random_models
install_random_models(Path({str(models)!r}), 'chaos')
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, env=env)
    return models


def photo(seed: int, size: tuple[int, int] = (96, 72), fmt: str = "JPEG") -> bytes:
    """A small distinct photo: a colour from the seed with a stripe, so no two are alike."""
    from PIL import Image

    color = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 80) % 256)
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):
        image.putpixel((x, (seed + x) % size[1]), (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
