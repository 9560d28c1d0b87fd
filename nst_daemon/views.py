"""Rich tables for the read-only CLI listings: jobs, one job, users."""

from __future__ import annotations

import time
from pathlib import PurePath

import sqlite_utils
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nst_daemon.jobs import Job, JobStore


def _age(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def print_jobs(jobs: JobStore, console: Console, limit: int = 50) -> None:
    newest = jobs.newest(limit)
    table = Table(title=f"jobs (newest {limit})" if newest else "jobs: none yet")
    # The short columns never wrap, so an 80-column terminal folds only the free text.
    for column in ("id", "from", "style", "state", "delivery", "created", "error"):
        free_text = column in ("from", "style", "error")
        table.add_column(column, overflow="fold", no_wrap=not free_text, ratio=1 if free_text else None)
    for job in newest:
        table.add_row(
            str(job.id),
            escape(_origin(job)),
            _styles(job),
            _state(job),
            job.delivery,
            _age(job.created_at),
            escape(job.error or ""),
        )
    console.print(table)


def print_job(job: Job, console: Console) -> None:
    """One job in full: where it came from, what it ran, its store keys and where its result went."""
    rows = [
        ("job", f"{job.id}: {_state(job)}, delivery {job.delivery}"),
        ("from", _origin(job, full=True)),
        ("style", _styles(job) + _params(job)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("attempts", f"{job.attempts} run, {job.delivery_attempts} delivery"),
        ("error", job.error or ""),
        ("inputs", ", ".join(job.input_keys)),
        ("result", job.output_key or "(none)"),
        ("delivered to", _destination(job)),
    ]
    # Plain "label  value" lines, not a table: no padding after the value, easy to grep and to parse.
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        if value:
            console.print(f"[bold]{label:<{width}}[/]{escape(value)}", highlight=False)


def _state(job: Job) -> str:
    return f"running {job.progress * 100:.0f}%" if job.state == "running" else job.state


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp))} ({_age(timestamp)})"


def _origin(job: Job, full: bool = False) -> str:
    """'telegram 123456'; a dropped file as its style folder and name ('folder monet/photo.jpg')."""
    if job.source == "folder" and not full:
        path = PurePath(job.owner)
        return f"folder {path.parent.name}/{path.name}"
    return f"{job.source} {job.owner}"


def _styles(job: Job) -> str:
    return job.style_label


def _params(job: Job) -> str:
    shown = ", ".join(f"{key} {value}" for key, value in sorted(job.params.items()))
    return f" ({shown})" if shown else ""


def _destination(job: Job) -> str:
    """Where the result was delivered: the folder's outbox file, or the Telegram chat."""
    reply = job.reply
    if job.source == "folder":
        # The watched folder records the outbox file it wrote as `result_path`.
        return str(reply.get("result_path") or ("(not yet)" if job.delivery == "pending" else "(no file)"))
    if job.source == "telegram" and "chat_id" in reply:
        return f"telegram chat {reply['chat_id']}" + (" (pending)" if job.delivery == "pending" else "")
    return ""


def print_users(db: sqlite_utils.Database, configured: list[int], console: Console) -> None:
    table = Table(title="allowed Telegram users")
    table.add_column("id")
    table.add_column("from")
    table.add_column("added")
    for user_id in configured:
        table.add_row(str(user_id), "config (telegram.allowed_users)", "")
    for row in db["users"].rows_where(order_by="id"):
        if row["id"] not in configured:
            table.add_row(str(row["id"]), "database (nstd users add)", _age(row["added_at"]))
    if not table.row_count:
        console.print("no users are allowed yet: add one with `nstd users add ID`")
        return
    console.print(table)
