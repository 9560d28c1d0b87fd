"""The command line: help, version, one-line errors with a non-zero exit, users round trip, jobs table."""

from __future__ import annotations

import os
import subprocess
import time
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


def table_rows(output: str) -> list[list[str]]:
    """A rich table's body as rows of cells, each cell's wrapped lines joined, spaces dropped."""
    body = output.split("┩", 1)[1].split("└", 1)[0]
    rows: list[list[str]] = []
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if not cells:
            continue
        if cells[0]:  # a new row starts where its id is
            rows.append(["" for _ in cells])
        rows[-1] = [joined + cell.replace(" ", "") for joined, cell in zip(rows[-1], cells, strict=True)]
    return rows


def test_jobs_table_fits_80_columns_and_says_where_each_job_came_from(config: Path) -> None:
    from nst_daemon import db
    from nst_daemon.config import load_settings

    now = time.time()
    jobs = db.connect(load_settings(config).db_path)["jobs"]
    common = {"params": "{}", "reply": "{}", "input_keys": "[]", "created_at": now - 150}
    jobs.insert_all(
        [
            {"source": "telegram", "owner": "123456789", "engine": "cyclegan", "styles": '["monet"]',
             "state": "running", "progress": 0.4, "delivery": "pending", **common},
            {"source": "folder", "owner": "/srv/watch/inbox/vangogh/holiday-photo.jpg", "engine": "cyclegan",
             "styles": '["vangogh"]', "state": "failed", "delivery": "delivered",
             "error": "the content image: this image is damaged or incomplete", **common},
            {"source": "telegram", "owner": "42", "engine": "nst", "styles": '["k1", "k2"]',
             "state": "cancelled", "delivery": "pending", **common},
        ]
    )  # fmt: skip

    result = nstd("--config", str(config), "jobs", env={"COLUMNS": "80"})

    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    header = [cell.strip() for cell in result.stdout.split("┃", 1)[1].split("\n", 1)[0].split("┃")[:-1]]
    assert header == ["id", "from", "style", "state", "delivery", "created", "error"]
    assert table_rows(result.stdout) == [
        ["3", "telegram42", "NST,2styleimages", "cancelled", "pending", "2mago", ""],
        ["2", "foldervangogh/holiday-photo.jpg", "vangogh", "failed", "delivered", "2mago",
         "thecontentimage:thisimageisdamagedorincomplete"],
        ["1", "telegram123456789", "monet", "running40%", "pending", "2mago", ""],
    ]  # fmt: skip
    # The short columns never wrap: each value sits on its row's first line.
    first_lines = [line for line in result.stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    for line, state in zip(first_lines, ("cancelled", "failed", "running 40%"), strict=True):
        assert f" {state} " in line and " 2m ago " in line, line


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "bad.toml", {"queue": {"max_pending": "lots"}})
    result = nstd("--config", str(cfg), "jobs")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "queue.max_pending" in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_configured_path_that_cannot_be_a_folder_is_one_line_naming_its_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way", encoding="utf-8")
    cases = [
        ({"paths": {"state_dir": str(blocker / "state")}}, "jobs", "the state directory (paths.state_dir)"),
        ({"paths": {"state_dir": "s"}, "store": {"root": str(blocker / "objects")}}, "run",
         "the object store (store.root)"),
        ({"paths": {"state_dir": "s"}, "watch": {"enabled": True, "dir": str(blocker)}}, "run",
         "a folder of the watched folder (watch.dir)"),
        ({"paths": {"models_dir": str(blocker / "models")}}, "models import vgg19 x.pth",
         "the models directory (paths.models_dir)"),
    ]  # fmt: skip
    (tmp_path / "x.pth").write_bytes(b"not read: the models directory fails first")
    for number, (settings, command, what) in enumerate(cases):
        cfg = write_config(tmp_path / f"c{number}.toml", settings)
        result = nstd("--config", str(cfg), *command.split(), cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot create {what} ") and last.endswith(": Not a directory"), last
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
    zero = nstd("--config", str(tmp_path / "nope.toml"), "users", "add", "0")
    assert zero.returncode == 2 and "Traceback" not in zero.stderr
    assert "greater than or equal to 1" in zero.stderr
