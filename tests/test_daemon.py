"""`nstd run` as a real process: crash recovery, graceful shutdown, sd_notify, startup errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonProcess, wait_until
from PIL import Image

from nst_daemon import imaging
from nst_daemon.config import load_settings


def drop(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(imaging.encode_image(Image.new("RGB", size, color), "jpeg"))
    tmp.rename(path)


def job_row(db_path: Path, owner_suffix: str) -> dict | None:
    if not db_path.exists():
        return None
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("select * from jobs where owner like ?", [f"%{owner_suffix}"]).fetchone()
        return dict(row) if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def slow_nst_config(daemon_config):
    # Big enough that the job is still computing when the test interrupts it.
    return daemon_config(watch={"enabled": True, "settle_s": 0.1}, nst={"preset": "fast", "max_side": 128})


def start_with_a_style(daemon_config, daemon_process):
    """`nstd run` with the watched folder on and one NST style image in place: (config, settings, daemon)."""
    config = slow_nst_config(daemon_config)
    settings = load_settings(config)
    daemon = daemon_process(config).start()
    drop(settings.watch.dir / "styles" / "s.jpg", (220, 30, 30), (64, 64))
    return config, settings, daemon


def wait_for_progress(db_path: Path, name: str) -> None:
    wait_until(lambda: (job_row(db_path, name) or {}).get("progress", 0) > 0, 60, message=f"{name}: progress")


def test_sigkill_mid_job_then_restart_delivers_exactly_once(daemon_config, daemon_process) -> None:
    config, settings, daemon = start_with_a_style(daemon_config, daemon_process)
    watch, db_path = settings.watch.dir, settings.db_path
    drop(watch / "inbox" / "nst" / "photo.jpg", (30, 140, 220), (160, 120))
    wait_for_progress(db_path, "photo.jpg")
    daemon.kill()
    row = job_row(db_path, "photo.jpg")
    assert row["state"] == "running"
    assert not (watch / "outbox" / "nst" / "photo.nst.jpg").exists()

    restarted = daemon_process(config).start()
    wait_until(
        lambda: (job_row(db_path, "photo.jpg") or {}).get("delivery") == "delivered",
        180,
        message="delivered after restart",
    )
    restarted.stop()
    row = job_row(db_path, "photo.jpg")
    # The kill was the daemon's, not the job's: it is not counted against the job's attempts.
    assert row["state"] == "done" and row["attempts"] == 0
    assert json.loads(row["params"])["interruptions"] == 1
    assert [p.name for p in (watch / "outbox" / "nst").iterdir()] == ["photo.nst.jpg"]
    assert [p.name for p in (watch / "done" / "nst").iterdir()] == ["photo.jpg"]
    assert not list((watch / "inbox" / "nst").iterdir())
    Image.open(watch / "outbox" / "nst" / "photo.nst.jpg").load()
    # No partial object is visible in the store: every listed object reads back whole.
    from nst_daemon.store import open_store

    store = open_store(settings)
    listing = store.list_objects_v2(Bucket=settings.store.bucket, Prefix=f"jobs/{row['id']}/")
    keys = sorted(item["Key"].rsplit("/", 1)[1] for item in listing["Contents"])
    assert keys == ["content.jpg", "report.json", "result.jpg", "style-1.jpg"]
    for item in listing["Contents"]:
        body = store.get_object(Bucket=settings.store.bucket, Key=item["Key"])["Body"].read()
        assert len(body) == item["Size"]


def test_sigterm_mid_job_exits_within_grace_and_job_completes_after_restart(
    daemon_config, daemon_process
) -> None:
    config, settings, daemon = start_with_a_style(daemon_config, daemon_process)
    watch, db_path = settings.watch.dir, settings.db_path
    drop(watch / "inbox" / "nst" / "term.jpg", (30, 140, 220), (160, 120))
    wait_for_progress(db_path, "term.jpg")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(settings.daemon.grace_period_s + 10) == 0
    # README: "has exited by the grace period plus 5 s" (systemd's TimeoutStopSec keeps 10 s).
    exited = time.monotonic() - started
    assert exited < settings.daemon.grace_period_s + 5, f"exited after {exited:.2f} s:\n" + daemon.log_since(
        started
    )
    row = job_row(db_path, "term.jpg")
    assert row["state"] in ("queued", "done"), row
    restarted = daemon_process(config).start()
    wait_until(
        lambda: (job_row(db_path, "term.jpg") or {}).get("delivery") == "delivered",
        180,
        message="job done after restart",
    )
    restarted.stop()
    assert (watch / "outbox" / "nst" / "term.nst.jpg").exists()


def test_sd_notify_messages(tmp_path: Path, daemon_config, daemon_process) -> None:
    address = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(address))
    server.settimeout(0.2)
    messages: list[str] = []

    def receive_until(predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            with contextlib.suppress(TimeoutError):
                messages.append(server.recv(4096).decode())
        assert predicate(), messages

    config = daemon_config()
    daemon = daemon_process(config, env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"})
    daemon.start(wait_for=None)
    receive_until(lambda: any(m.startswith("READY=1") for m in messages), 60)
    receive_until(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 2, 5)
    assert any("STATUS=0 job(s) queued or running" in m for m in messages)
    daemon.signal(signal.SIGTERM)
    receive_until(lambda: "STOPPING=1" in messages, 10)
    assert daemon.wait(30) == 0
    server.close()


def test_bad_config_at_start_is_one_line(tmp_path: Path, daemon_process) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[queue]\nmax_pending = -1\n")
    daemon = daemon_process(config).start(wait_for=None)
    assert daemon.wait(30) == 1
    assert "queue.max_pending" in daemon.log and "Traceback" not in daemon.log
    assert len([line for line in daemon.lines if line.strip()]) == 1


def test_missing_models_at_start_is_one_clear_line(tmp_path: Path, daemon_process) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "s"}"\nmodels_dir = "{tmp_path / "m"}"\n')
    daemon = daemon_process(config).start()
    assert "no models are installed: run `nstd models pull`" in daemon.log
    # One line that says how to add a token, and the last lines say nothing is ready yet.
    (token_line,) = [line for line in daemon.lines if "no Telegram token configured" in line]
    assert "NSTD_TELEGRAM__TOKEN=" in token_line and "telegram.token_file" in token_line
    assert "no style is ready yet" in daemon.log
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def test_telegram_unreachable_at_start_says_where_and_why_and_keeps_running(
    tmp_path: Path, daemon_process
) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "s"}"\nmodels_dir = "{tmp_path / "m"}"\n'
        f'[telegram]\ntoken = "123456:{"A" * 35}"\napi_base = "http://127.0.0.1:{port}"\n'
    )
    daemon = daemon_process(config).start(wait_for="not reachable at start")
    daemon.wait_for_log("nstd is running")
    line = next(line for line in daemon.lines if "not reachable at start" in line)
    assert f"http://127.0.0.1:{port} not reachable at start (TelegramNetworkError: " in line, line
    assert "Cannot connect to host" in line, line
    assert "A" * 35 not in daemon.log  # the token's secret part is never logged
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _maps_torch(pid: int) -> bool:
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def test_engines_run_in_their_own_process(daemon_config, daemon_process) -> None:
    """torch loads in the engine process only, so its import never holds the daemon's GIL; killing that
    process costs the job it was running one attempt, and the daemon goes on with a new one."""
    _, settings, daemon = start_with_a_style(daemon_config, daemon_process)
    watch, db_path = settings.watch.dir, settings.db_path
    drop(watch / "inbox" / "nst" / "first.jpg", (30, 140, 220), (48, 36))
    wait_until(lambda: (job_row(db_path, "first.jpg") or {}).get("state") == "done", 120, message="job 1")
    pid = daemon.proc.pid
    # multiprocessing's resource tracker is a child too; the engine process is the one with torch.
    (engines,) = [child for child in _children(pid) if _maps_torch(child)]
    assert not _maps_torch(pid)

    drop(watch / "inbox" / "nst" / "second.jpg", (30, 140, 220), (160, 120))
    wait_for_progress(db_path, "second.jpg")
    os.kill(engines, signal.SIGKILL)
    # The crash counts against the job, which runs again in a new engine process.
    wait_until(lambda: (job_row(db_path, "second.jpg") or {}).get("state") == "done", 120, message="retry")
    assert job_row(db_path, "second.jpg")["attempts"] == 1
    drop(watch / "inbox" / "nst" / "third.jpg", (30, 140, 220), (48, 36))
    wait_until(lambda: (job_row(db_path, "third.jpg") or {}).get("state") == "done", 120, message="job 3")
    (new_engines,) = [child for child in _children(pid) if _maps_torch(child)]
    assert new_engines != engines
    assert daemon.stop() == 0
    wait_until(lambda: not Path(f"/proc/{new_engines}").exists(), 15, message="the engine process to end")


# --- shutdown and signals: a daemon whose engine process hangs in every job, as a long CycleGAN run does ----


class HangingDaemon(DaemonProcess):
    """The daemon of `nstd run`, its engine process running `engine_stubs.HangingRunner`: every job
    reports progress and then ignores its cancel, as one long ONNX Runtime call does. No CPU is used."""

    def command(self) -> list[str]:
        tests = str(Path(__file__).resolve().parent)
        self.env["PYTHONPATH"] = os.pathsep.join([str(Path(tests).parent), tests])
        serve = "import engine_stubs; engine_stubs.serve_with_hanging_engines()"
        return [sys.executable, "-c", serve, str(self.config)]


def hanging_daemon_with_jobs(
    daemon_config, tmp_path: Path, grace_s: float, photos: int, hang_s: float | None = None, folder="monet"
):
    """A hanging daemon with `photos` CycleGAN jobs queued and one running: (daemon, settings, the names
    of the photos, the running job's id)."""
    config = daemon_config(watch={"enabled": True, "settle_s": 0.1}, daemon={"grace_period_s": grace_s})
    settings = load_settings(config)
    daemon = HangingDaemon(config, env={"STUB_HANG_S": str(hang_s)} if hang_s is not None else None)
    daemon.start()
    names = [f"p{index}.jpg" for index in range(photos)]
    if folder == "nst":
        drop(settings.watch.dir / "styles" / "s.jpg", (220, 30, 30), (64, 64))
    for name in names:
        drop(settings.watch.dir / "inbox" / folder / name, (30, 140, 220), (48, 36))
    wait_until(lambda: all(job_row(settings.db_path, name) for name in names), 60, message="the jobs")
    rows = wait_until(
        lambda: [row for name in names if (row := job_row(settings.db_path, name)) and row["progress"] > 0],
        60,
        message="a job's progress",
    )
    daemon.wait_for_log("engine process started")
    return daemon, settings, names, rows[0]["id"]


def engine_pid(daemon: DaemonProcess) -> int:
    line = next(line for line in daemon.lines if "engine process started (pid" in line)
    return int(line.rsplit("pid ", 1)[1].rstrip(")"))


def stop_hanging(daemon: DaemonProcess) -> None:
    """Kill the daemon and its hanging engine process (by pid) if the test left them running."""
    child = engine_pid(daemon) if "engine process started" in daemon.log else None
    daemon.kill()
    if child is not None and not ended(child):
        os.kill(child, signal.SIGKILL)


def ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("folder", ["monet", "nst"])
def test_sigterm_with_a_backlog_stops_within_the_grace_period_plus_5_s(
    daemon_config, tmp_path: Path, folder: str
) -> None:
    """Issue 19: SIGTERM with a backlog took 17-37 s. The running job gets the grace period, is then ended
    with its engine process and queued again; no other job starts; the daemon is gone in grace + 5 s.
    A CycleGAN job's process is ended at the cancel; an NST job that ignores it, at the deadline."""
    grace = 3.0
    daemon, settings, names, running = hanging_daemon_with_jobs(
        daemon_config, tmp_path, grace, photos=4, folder=folder
    )
    try:
        child = engine_pid(daemon)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(grace + 30) == 0
        assert time.monotonic() - started < grace + 5
        assert f"finishing job {running} (up to 3 s), press Ctrl-C again to stop now" in daemon.log
        rows = [job_row(settings.db_path, name) for name in names]
        # The running one is queued again; no other one started.
        assert [row["state"] for row in rows] == ["queued"] * len(names), rows
        assert daemon.log.count("engine process started") == 1
        wait_until(lambda: ended(child), 10, message="the engine process to end")
    finally:
        stop_hanging(daemon)


def test_a_job_that_finishes_in_the_grace_period_is_the_last_to_start(daemon_config, tmp_path: Path) -> None:
    """The backlog's other half: the queue's worker took the next job while the daemon was stopping, so
    the shutdown then waited on a job that had only just begun, and left it 'running'."""
    daemon, settings, names, running = hanging_daemon_with_jobs(
        daemon_config, tmp_path, grace_s=60, photos=3, hang_s=3
    )
    try:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        states = {row["id"]: row["state"] for row in (job_row(settings.db_path, name) for name in names)}
        assert states.pop(running) == "done"
        assert set(states.values()) == {"queued"}, states
        assert daemon.log.count("started (attempt") == 1
    finally:
        stop_hanging(daemon)


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_job_queued(daemon_config, tmp_path: Path) -> None:
    """Issue 18: a second Ctrl-C was ignored without a word while a CycleGAN job ran out its grace."""
    grace = 120.0
    daemon, settings, names, running = hanging_daemon_with_jobs(daemon_config, tmp_path, grace, photos=2)
    try:
        child = engine_pid(daemon)
        daemon.signal(signal.SIGINT)
        daemon.wait_for_log("press Ctrl-C again to stop now")
        started = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert daemon.wait(60) == 0
        assert time.monotonic() - started < grace / 4  # nowhere near the grace period
        assert f"SIGINT again: stopping now; job {running} stays queued" in daemon.log
        rows = [job_row(settings.db_path, name) for name in names]
        assert [row["state"] for row in rows] == ["queued", "queued"], rows
        wait_until(lambda: ended(child), 10, message="the engine process to end")
        assert "Traceback" not in daemon.log
    finally:
        stop_hanging(daemon)


def test_a_dead_background_task_exits_non_zero(daemon_config, monkeypatch) -> None:
    """Issue 19: a worker crash (a full disk, once) logged 'shutting down' and exited 0, so systemd's
    Restart=on-failure left nstd down. Any background task that dies makes the exit status non-zero."""
    from nst_daemon.daemon import Daemon
    from nst_daemon.jobs import JobQueue

    async def crash(self) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(JobQueue, "run_worker", crash)
    settings = load_settings(daemon_config())

    class NoEngines:
        def run(self, *args: object) -> None:
            raise AssertionError("no job runs")

        def unload_idle(self, idle_s: float) -> list[str]:
            return []

    code = asyncio.run(asyncio.wait_for(Daemon(settings, runner=NoEngines()).serve(), 60))
    assert code == 1
