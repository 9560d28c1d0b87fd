"""The command line: help, version, one-line errors with a non-zero exit, users round trip, jobs table."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from checkpoints import random_image
from conftest import NSTD, write_config
from PIL import Image

from nst_daemon.jobs import Job, JobQueue, JobRequest, RunResult


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


class FakeRunner:
    """Stands in for the engines: the result is the content, mirrored, so it differs from the input."""

    def run(self, job: Job, content: bytes, styles: list[bytes], progress, cancel) -> RunResult:
        image = Image.open(io.BytesIO(content)).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return RunResult(image, {"device": "fake"})

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    random_image(size, seed=seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def intake(config: Path, requests: list[JobRequest], run: int = 0) -> list[Job]:
    """Jobs created the way the bot and the folder create them (JobQueue.submit); the first `run` of them
    then go through the worker's own path to a stored result."""
    from nst_daemon import db
    from nst_daemon.config import load_settings
    from nst_daemon.store.factory import open_store

    settings = load_settings(config, environ={})
    queue = JobQueue(
        db.connect(settings.db_path), open_store(settings), settings.store.bucket, settings, FakeRunner()
    )

    async def go() -> list[Job]:
        jobs = [await queue.submit(request) for request in requests]
        for _ in range(run):
            claimed = await queue.job_store.claim_next()
            assert claimed is not None
            await queue.worker.run_one(claimed)
        await asyncio.gather(*queue.life.background)
        return [queue.get(job.id) for job in jobs]

    return asyncio.run(go())


def update_job(config: Path, job_id: int, **values: object) -> None:
    from nst_daemon import db
    from nst_daemon.config import load_settings

    db.connect(load_settings(config, environ={}).db_path)["jobs"].update(job_id, values)


def test_jobs_table_fits_80_columns_and_says_where_each_job_came_from(config: Path) -> None:
    jobs = intake(
        config,
        [
            JobRequest("telegram", "123456789", "cyclegan", jpeg(1), styles=["monet"], reply={"chat_id": 1}),
            JobRequest("folder", "/srv/watch/inbox/vangogh/holiday-photo.jpg", "cyclegan", jpeg(2),
                       styles=["vangogh"], reply={"path": "/srv/watch/inbox/vangogh/holiday-photo.jpg"}),
            JobRequest("telegram", "42", "nst", jpeg(3), style_images=[jpeg(4), jpeg(5)],
                       reply={"chat_id": 42}),
        ],
    )  # fmt: skip
    created = time.time() - 150
    update_job(config, jobs[0].id, state="running", progress=0.4, created_at=created)
    update_job(config, jobs[1].id, state="failed", delivery="delivered", created_at=created,
               error="the content image: this image is damaged or incomplete")  # fmt: skip
    update_job(config, jobs[2].id, state="cancelled", created_at=created)

    result = nstd("--config", str(config), "jobs", env={"COLUMNS": "80"})

    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    header = [cell.strip() for cell in result.stdout.split("┃", 1)[1].split("\n", 1)[0].split("┃")[:-1]]
    assert header == ["id", "from", "style", "state", "delivery", "created", "error"]
    assert table_rows(result.stdout) == [
        ["3", "telegram42", "Multi-styleNST(2styleimages)", "cancelled", "pending", "2mago", ""],
        ["2", "foldervangogh/holiday-photo.jpg", "VanGogh", "failed", "delivered", "2mago",
         "thecontentimage:thisimageisdamagedorincomplete"],
        ["1", "telegram123456789", "Monet", "running40%", "pending", "2mago", ""],
    ]  # fmt: skip
    # The short columns never wrap: each value sits on its row's first line.
    first_lines = [line for line in result.stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    for line, state in zip(first_lines, ("cancelled", "failed", "running 40%"), strict=True):
        assert f" {state} " in line and " 2m ago " in line, line


def test_jobs_show_names_the_store_keys_and_where_the_result_went(config: Path, tmp_path: Path) -> None:
    dropped = tmp_path / "watch" / "inbox" / "monet" / "beach.jpg"
    outbox = tmp_path / "watch" / "outbox" / "monet" / "beach.monet-1.jpg"
    [done, nst] = intake(
        config,
        [
            JobRequest("folder", str(dropped), "cyclegan", jpeg(6), styles=["monet"],
                       reply={"path": str(dropped), "folder": "monet", "name": "beach.jpg"}),
            JobRequest("telegram", "42", "nst", jpeg(7), style_images=[jpeg(8)], reply={"chat_id": 42}),
        ],
        run=1,
    )  # fmt: skip
    # The watched folder records the outbox file it wrote as `result_path` (its side of the contract).
    update_job(
        config, done.id, reply=json.dumps({**done.reply, "result_path": str(outbox)}), delivery="delivered"
    )

    result = nstd("--config", str(config), "jobs", "show", str(done.id))
    assert result.returncode == 0, result.stderr
    # Label and value are two columns at least two spaces apart ("delivered to" has one inside).
    fields = dict(re.fullmatch(r"(.+?) {2,}(.*)", line).groups() for line in result.stdout.splitlines())
    assert fields["job"] == f"{done.id}: done, delivery delivered"
    assert fields["from"] == f"folder {dropped}"
    assert fields["inputs"] == f"jobs/{done.id}/content.jpg"
    assert fields["result"] == f"jobs/{done.id}/result.jpg"
    assert fields["delivered to"] == str(outbox)

    shown = nstd("--config", str(config), "jobs", "show", str(nst.id)).stdout
    assert f"inputs        jobs/{nst.id}/content.jpg, jobs/{nst.id}/style-1.jpg" in shown
    assert "Multi-style NST (1 style image)" in shown and "result        (none)" in shown

    missing = nstd("--config", str(config), "jobs", "show", "999")
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == "error: there is no job 999; `nstd jobs` lists them"
    )


def test_jobs_export_writes_the_stored_result_and_never_overwrites(config: Path, tmp_path: Path) -> None:
    [done, queued] = intake(
        config,
        [
            JobRequest("telegram", "7", "cyclegan", jpeg(9), styles=["monet"], reply={"chat_id": 7}),
            JobRequest("telegram", "7", "cyclegan", jpeg(10), styles=["cezanne"], reply={"chat_id": 7}),
        ],
        run=1,
    )  # fmt: skip
    from nst_daemon.config import load_settings
    from nst_daemon.store import get_bytes
    from nst_daemon.store.factory import open_store

    settings = load_settings(config, environ={})
    stored = get_bytes(open_store(settings), settings.store.bucket, f"jobs/{done.id}/result.jpg")

    output = tmp_path / "again.jpg"
    result = nstd("--config", str(config), "jobs", "export", str(done.id), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {output} (the result of job {done.id})"
    assert output.read_bytes() == stored

    output.write_bytes(b"the user's own file")
    again = nstd("--config", str(config), "jobs", "export", str(done.id), "-o", str(output))
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"error: {output} already exists; choose another output file or add --force to replace it"
    )
    assert output.read_bytes() == b"the user's own file"
    assert (
        nstd("--config", str(config), "jobs", "export", str(done.id), "-o", str(output), "--force").returncode
        == 0
    )
    assert output.read_bytes() == stored

    # A folder gets job-ID.jpg; a .png output gets a PNG.
    assert nstd("--config", str(config), "jobs", "export", str(done.id), "-o", str(tmp_path)).returncode == 0
    assert (tmp_path / f"job-{done.id}.jpg").read_bytes() == stored
    png = tmp_path / "again.png"
    assert nstd("--config", str(config), "jobs", "export", str(done.id), "-o", str(png)).returncode == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (64, 48)

    pending = nstd("--config", str(config), "jobs", "export", str(queued.id), "-o", str(tmp_path / "q.jpg"))
    assert pending.returncode == 1 and f"job {queued.id} has no result (queued)" in pending.stderr


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
