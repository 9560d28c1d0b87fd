"""The job store: the only code that reads or writes the `jobs` table.

The daemon's queue, the watched folder, the bot (through the queue) and the CLI's `nstd jobs` all ask it.
Reads are single statements on the caller's thread (WAL: a read never waits for a writer). Writes go
through `JobWriter`'s one thread, in the order they were asked for, and are awaited: no SQLite write
runs on the event loop, and none holds a lock that the loop's other work waits on.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import sqlite_utils

from nst_daemon import db as database
from nst_daemon.job_model import Job, JobRequest
from nst_daemon.jobs import rows
from nst_daemon.jobs.rows import ACTIVE_WHERE, FINAL_WHERE, STORED_WHERE
from nst_daemon.jobs.writer import JobWriter

RecoveredRows = tuple[list[int], list[tuple[int, int]], list[int], list[int]]


class JobStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.writer = JobWriter(database.file_of(db.conn))

    @classmethod
    def open(cls, path: Path) -> JobStore:
        """The store of the state database at `path` (created and migrated if needed): for the CLI."""
        return cls(database.connect(path))

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    # --- reads ---

    def get(self, job_id: int, *, stored_only: bool = True) -> Job | None:
        """One job; by default only once its inputs are stored (an intake in progress is not a job yet)."""
        where = f"id = ? and {STORED_WHERE}" if stored_only else "id = ?"
        found = rows.fetch(self._conn, where, [job_id])
        return found[0] if found else None

    def active(self, owner: str | None = None) -> list[Job]:
        """Queued and running jobs, oldest first: the order the worker takes them in."""
        where, args = f"{ACTIVE_WHERE} and {STORED_WHERE}", []
        if owner is not None:
            where += " and owner = ?"
            args.append(owner)
        return rows.fetch(self._conn, where, args, "order by id")

    def recent(self, owner: str, limit: int = 5) -> list[Job]:
        return rows.fetch(
            self._conn, f"owner = ? and {STORED_WHERE}", [owner, limit], "order by id desc limit ?"
        )

    def newest(self, limit: int) -> list[Job]:
        """Every source's latest jobs, newest first (`nstd jobs`)."""
        return rows.fetch(self._conn, "1", [int(limit)], "order by id desc limit ?")

    def count_active(self, owner: str | None = None) -> int:
        return rows.count_active(self._conn, owner)

    def check_capacity(self, owner: str, max_pending: int, per_user: int) -> None:
        """Raise QueueFull or UserBusy: a cheap early refusal; `reserve` decides in its transaction."""
        rows.check_capacity(self._conn, owner, max_pending, per_user)

    def for_intake(self, key: str) -> Job | None:
        """The job a Telegram update's image already became (its `reply.intake`), if any."""
        found = rows.fetch(
            self._conn,
            "source = 'telegram' and json_extract(reply, '$.intake') = ?",
            [key],
            "order by id limit 1",
        )
        return found[0] if found else None

    def folder_file_taken(self, path: str) -> bool:
        """Whether a dropped file already has a job that is running or whose result is still on its way."""
        where = f"source = 'folder' and owner = ? and ({ACTIVE_WHERE} or delivery in ('pending', 'sending'))"
        return bool(self._conn.execute(f"select count(*) from jobs where {where}", [path]).fetchone()[0])

    def undelivered(self, sources: list[str]) -> list[Job]:
        """Finished jobs whose result has not reached one of `sources` yet, oldest first."""
        if not sources:
            return []
        marks = ",".join("?" * len(sources))
        where = f"{FINAL_WHERE} and delivery = 'pending' and source in ({marks})"
        return rows.fetch(self._conn, where, list(sources), "order by id")

    def finished_before(self, cutoff: float) -> list[int]:
        """Ids of finished jobs created before `cutoff` (a time.time() value)."""
        return [job.id for job in rows.fetch(self._conn, f"{FINAL_WHERE} and created_at < ?", [cutoff])]

    # --- writes (on the writer's thread) ---

    async def reserve(self, request: JobRequest, max_pending: int, per_user: int) -> int:
        """Insert a new job's row without its inputs; its id names the objects stored next."""
        return await self.writer(partial(rows.insert_job, request, max_pending, per_user))

    async def set_input_keys(self, job_id: int, keys: list[str]) -> Job:
        return await self.writer(partial(rows.set_input_keys, job_id, keys))

    async def update(
        self, job_id: int, values: dict[str, Any], only_if_state: str | None = None
    ) -> Job | None:
        """Change a job's columns (only while in `only_if_state`, if given); the job as written, or None."""
        return await self.writer(partial(rows.update_row, job_id, values, only_if_state))

    async def merge_reply(self, job_id: int, values: dict[str, Any]) -> None:
        await self.writer(partial(rows.merge_reply, job_id, values))

    async def delete(self, job_id: int) -> None:
        await self.writer(partial(rows.delete_row, job_id))

    async def claim_next(self) -> Job | None:
        """The oldest queued job, now running; None when there is none."""
        return await self.writer(rows.claim_next)

    async def claim_delivery(self, job_id: int, attempts: int) -> Job | None:
        """pending -> sending, only where still pending at `attempts`; None when someone else has it."""
        return await self.writer(partial(rows.claim_delivery, job_id, attempts))

    async def recover(self) -> RecoveredRows:
        """The start-up repairs (see `rows.recover_rows`)."""
        return await self.writer(rows.recover_rows)

    async def close(self) -> None:
        await self.writer.close()
