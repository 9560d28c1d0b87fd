"""Rich tables for the read-only CLI listings."""

from __future__ import annotations

import json
import time

import sqlite_utils
from rich.console import Console
from rich.table import Table


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
    for column in (
        "id",
        "source",
        "owner",
        "engine",
        "styles",
        "state",
        "progress",
        "delivery",
        "created",
        "error",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        styles = json.loads(row["styles"] or "[]")
        table.add_row(
            str(row["id"]),
            row["source"],
            row["owner"],
            row["engine"],
            ", ".join(styles) if row["engine"] == "cyclegan" else f"{len(styles)} style image(s)",
            row["state"],
            f"{(row['progress'] or 0) * 100:.0f}%",
            row["delivery"] or "",
            _age(row["created_at"]),
            row["error"] or "",
        )
    console.print(table)


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
