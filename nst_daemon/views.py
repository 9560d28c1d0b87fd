"""Rich tables for the read-only CLI listings."""

from __future__ import annotations

import json
import time
from pathlib import PurePath

import sqlite_utils
from rich.console import Console
from rich.table import Table

from nst_daemon.wording import plural


def _age(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def print_jobs(db: sqlite_utils.Database, console: Console, limit: int = 50) -> None:
    rows = list(db["jobs"].rows_where(order_by="id desc", limit=limit))
    table = Table(title=f"jobs (newest {limit})" if rows else "jobs: none yet")
    # The short columns never wrap, so an 80-column terminal folds only the free text.
    for column in ("id", "from", "style", "state", "delivery", "created", "error"):
        free_text = column in ("from", "style", "error")
        table.add_column(column, overflow="fold", no_wrap=not free_text, ratio=1 if free_text else None)
    for row in rows:
        table.add_row(
            str(row["id"]),
            _origin(row["source"], row["owner"]),
            _styles(row["engine"], json.loads(row["styles"] or "[]")),
            f"running {(row['progress'] or 0) * 100:.0f}%" if row["state"] == "running" else row["state"],
            row["delivery"] or "",
            _age(row["created_at"]),
            row["error"] or "",
        )
    console.print(table)


def _origin(source: str, owner: str) -> str:
    """'telegram 123456'; a dropped file as its style folder and name ('folder monet/photo.jpg')."""
    if source == "folder":
        path = PurePath(owner)
        return f"folder {path.parent.name}/{path.name}"
    return f"{source} {owner}"


def _styles(engine: str, styles: list[str]) -> str:
    if engine == "cyclegan":
        return ", ".join(styles)
    return f"NST, {len(styles)} style image{plural(len(styles))}"


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
