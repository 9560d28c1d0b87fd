"""The command line: help, version, one-line errors with a non-zero exit, users round trip, jobs table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import NSTD, write_config


def nstd(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NSTD_")}
    full_env.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run([NSTD, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", {"paths": {"state_dir": "state"}})


def test_help_lists_every_contract_command() -> None:
    result = nstd("--help")
    assert result.returncode == 0
    for command in ("run", "models", "stylize", "doctor", "jobs", "users"):
        assert command in result.stdout
    models = nstd("models", "--help")
    for command in ("list", "verify", "pull", "import"):
        assert command in models.stdout
    users = nstd("users", "--help")
    for command in ("list", "add", "remove"):
        assert command in users.stdout
    stylize = nstd("stylize", "--help")
    for option in ("--output", "--style", "--style-image", "--preset", "--max-side", "--device"):
        assert option in stylize.stdout


def test_version() -> None:
    result = nstd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("nstd ")


def test_users_round_trip(config: Path) -> None:
    assert "no users" in nstd("--config", str(config), "users", "list").stdout
    assert "added" in nstd("--config", str(config), "users", "add", "4242").stdout
    assert "4242" in nstd("--config", str(config), "users", "list").stdout
    assert nstd("--config", str(config), "users", "remove", "4242").returncode == 0
    assert "4242" not in nstd("--config", str(config), "users", "list").stdout
    again = nstd("--config", str(config), "users", "remove", "4242")
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "not in the database allowlist" in again.stderr


def test_users_list_shows_configured_users(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.toml", {"paths": {"state_dir": "s"}, "telegram": {"allowed_users": [77]}}
    )
    assert "77" in nstd("--config", str(cfg), "users", "list").stdout


def test_jobs_empty_table(config: Path) -> None:
    result = nstd("--config", str(config), "jobs")
    assert result.returncode == 0
    assert "none yet" in result.stdout


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.toml", {"queue": {"max_pending": "lots"}})
    result = nstd("--config", str(cfg), "jobs")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "queue.max_pending" in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.toml", {"queue": {"max_pending": "lots"}})
    result = nstd("--debug", "--config", str(cfg), "jobs")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_missing_config_file_and_usage_errors(tmp_path: Path) -> None:
    missing = nstd("--config", str(tmp_path / "nope.toml"), "jobs")
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    usage = nstd("users", "add", "not-a-number")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
