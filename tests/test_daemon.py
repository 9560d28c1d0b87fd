"""`nstd run` as a real process: crash recovery, graceful shutdown, sd_notify, startup errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

from conftest import wait_until
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
    assert row["state"] == "done" and row["attempts"] == 1
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
    assert time.monotonic() - started < settings.daemon.grace_period_s + 5
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
    process fails the job it was running, and the daemon goes on with a new one."""
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
    wait_until(lambda: (job_row(db_path, "second.jpg") or {}).get("state") == "failed", 30, message="fail")
    assert job_row(db_path, "second.jpg")["error"] == (
        "the engine process was killed by SIGKILL (out of memory?); the next job starts a new one"
    )
    drop(watch / "inbox" / "nst" / "third.jpg", (30, 140, 220), (48, 36))
    wait_until(lambda: (job_row(db_path, "third.jpg") or {}).get("state") == "done", 120, message="job 3")
    (new_engines,) = [child for child in _children(pid) if _maps_torch(child)]
    assert new_engines != engines
    assert daemon.stop() == 0
    wait_until(lambda: not Path(f"/proc/{new_engines}").exists(), 15, message="the engine process to end")
