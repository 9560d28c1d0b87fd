"""The job store's SQL: plain statements on the connection they are given. The writes each run as one
transaction on `JobWriter`'s thread and read the job back on that same connection (the shared one may
still be on an older snapshot); the reads run on any connection. Only `nst_daemon.jobs.store` calls these.

Not sqlite-utils' `rows_where` or `query`: those add a sqlite_master lookup or a savepoint around every
statement, which once made most of the statements a job ran on the event loop."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from nst_daemon.job_model import ACTIVE_STATES, FINAL_STATES, Job, JobRequest, QueueFull, UserBusy

# Daemon restarts a job may sit through while running before it fails: not blame (a daemon crash is not
# the job's doing), a guard against a job that takes the daemon itself down every time.
MAX_INTERRUPTIONS = 10


def _state_in(states: tuple[str, ...]) -> str:
    return "state in (" + ", ".join(f"'{state}'" for state in states) + ")"


ACTIVE_WHERE = _state_in(ACTIVE_STATES)
FINAL_WHERE = _state_in(FINAL_STATES)
# A queued row has no inputs for the moment between its insert and the store's answer (see
# `Intake.submit`): it counts against the caps, but nothing may run it or show it yet.
STORED_WHERE = "input_keys is not null"


# --- reads ---


def fetch_jobs(
    conn: sqlite3.Connection, where: str, args: list[Any] | None = None, suffix: str = ""
) -> list[dict[str, Any]]:
    """Rows of `jobs` as dicts, in one statement, all read before returning: an open cursor would pin
    a stale read snapshot on a shared connection."""
    cursor = conn.execute(f"select * from jobs where {where} {suffix}", args or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def fetch(conn: sqlite3.Connection, where: str, args: list[Any] | None = None, suffix: str = "") -> list[Job]:
    return [Job.from_row(row) for row in fetch_jobs(conn, where, args, suffix)]


def count_active(conn: sqlite3.Connection, owner: str | None = None) -> int:
    """Queued and running jobs, all or one owner's."""
    if owner is None:
        return conn.execute(f"select count(*) from jobs where {ACTIVE_WHERE}").fetchone()[0]
    return conn.execute(f"select count(*) from jobs where owner = ? and {ACTIVE_WHERE}", [owner]).fetchone()[
        0
    ]


def check_capacity(conn: sqlite3.Connection, owner: str, max_pending: int, per_user: int) -> None:
    if count_active(conn) >= max_pending:
        raise QueueFull(max_pending)
    if count_active(conn, owner) >= per_user:
        raise UserBusy(per_user)


# --- writes ---


def insert_job(request: JobRequest, max_pending: int, per_user: int, conn: sqlite3.Connection) -> int:
    """The row of a new job, without its input keys yet; the capacity check is in the same transaction,
    so two submissions racing for the last slot cannot both win."""
    check_capacity(conn, request.owner, max_pending, per_user)
    now = time.time()
    row = {
        "source": request.source,
        "owner": request.owner,
        "engine": request.engine,
        "styles": json.dumps(request.styles),
        "params": json.dumps(request.params),
        "state": "queued",
        "progress": 0.0,
        "attempts": 0,
        "delivery": "pending",
        "reply": json.dumps(request.reply),
        "created_at": now,
        "updated_at": now,
    }
    columns = ", ".join(f"[{name}]" for name in row)
    marks = ", ".join("?" * len(row))
    return conn.execute(f"insert into jobs ({columns}) values ({marks})", list(row.values())).lastrowid


def read_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    # On the writer's connection: the shared one may still be on an older snapshot.
    rows = fetch_jobs(conn, "id = ?", [job_id])
    return Job.from_row(rows[0]) if rows else None


def update_row(
    job_id: int, values: dict[str, Any], only_if_state: str | None, conn: sqlite3.Connection
) -> Job | None:
    values = {**values, "updated_at": time.time()}
    sets = ", ".join(f"[{key}] = ?" for key in values)
    where, args = "id = ?", [*values.values(), job_id]
    if only_if_state is not None:
        where += " and state = ?"
        args.append(only_if_state)
    if conn.execute(f"update jobs set {sets} where {where}", args).rowcount == 0:
        return None
    return read_job(conn, job_id)


def set_input_keys(job_id: int, keys: list[str], conn: sqlite3.Connection) -> Job:
    conn.execute("update jobs set input_keys = ? where id = ?", [json.dumps(keys), job_id])
    job = read_job(conn, job_id)
    assert job is not None
    return job


def merge_reply(job_id: int, values: dict[str, Any], conn: sqlite3.Connection) -> None:
    conn.execute(
        "update jobs set reply = json_patch(coalesce(reply, '{}'), ?) where id = ?",
        [json.dumps(values), job_id],
    )


def delete_row(job_id: int, conn: sqlite3.Connection) -> None:
    conn.execute("delete from jobs where id = ?", [job_id])


def claim_next(conn: sqlite3.Connection) -> Job | None:
    row = conn.execute(f"select id from jobs where state = 'queued' and {STORED_WHERE} order by id limit 1")
    found = row.fetchone()
    if found is None:
        return None
    return update_row(found[0], {"state": "running", "started_at": time.time(), "progress": 0.0}, None, conn)


def claim_delivery(job_id: int, attempts: int, conn: sqlite3.Connection) -> Job | None:
    """pending -> sending, only where the row is still pending at the attempts the caller read."""
    claimed = conn.execute(
        "update jobs set delivery = 'sending', updated_at = ? "
        "where id = ? and delivery = 'pending' and delivery_attempts = ?",
        [time.time(), job_id, attempts],
    ).rowcount
    return read_job(conn, job_id) if claimed else None


def recover_rows(conn: sqlite3.Connection) -> tuple[list[int], list[tuple[int, int]], list[int], list[int]]:
    """The start-up repairs, in one transaction: (intakes removed, jobs re-queued with their count of
    interruptions, jobs failed after too many, deliveries handed back to pending)."""
    orphans = [row[0] for row in conn.execute("select id from jobs where input_keys is null")]
    conn.executemany("delete from jobs where id = ?", [[job_id] for job_id in orphans])
    requeued, failed = [], []
    now = time.time()
    for row in fetch_jobs(conn, "state = 'running'", suffix="order by id"):
        params = json.loads(row["params"] or "{}")
        interruptions = int(params.get("interruptions", 0)) + 1
        params["interruptions"] = interruptions
        values: dict[str, Any] = {"params": json.dumps(params), "progress": 0.0, "updated_at": now}
        if interruptions >= MAX_INTERRUPTIONS:
            values.update(state="failed", error="interrupted repeatedly by daemon restarts", finished_at=now)
            failed.append(row["id"])
        else:
            values["state"] = "queued"
            requeued.append((row["id"], interruptions))
        sets = ", ".join(f"[{key}] = ?" for key in values)
        conn.execute(f"update jobs set {sets} where id = ?", [*values.values(), row["id"]])
    resent = [row[0] for row in conn.execute("select id from jobs where delivery = 'sending'")]
    # updated_at stays the claim's time, so the redelivery backoff does not hold the resend back.
    conn.execute("update jobs set delivery = 'pending' where delivery = 'sending'")
    return orphans, requeued, failed, resent
