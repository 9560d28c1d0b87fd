"""Every write to the jobs table, on one thread of its own, waiting out other processes' write locks.

One thread and one connection: writes happen in the order they were asked for (a progress update never
lands after the job's "done"), the event loop never waits on SQLite's lock, and a connection is never used
by two threads at once. SQLite's busy timeout makes a write wait for another process's lock; past it the
transaction is tried again until `LOCK_WAIT_S`, so a lock held for 12 s delays a photo instead of losing
it. Only after that does the caller get `DatabaseBusy`, a message for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from nst_daemon import db as database
from nst_daemon.errors import DiskFull, is_disk_full
from nst_daemon.job_model import DatabaseBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_WAIT_S = 120.0
LOCK_RETRY_S = 0.2


def is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "database is locked" in str(exc) or "database is busy" in str(exc)
    )


class JobWriter:
    def __init__(self, path: Path, lock_wait_s: float | None = None) -> None:
        self.path = path
        self.lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nstd-jobs-db")
        self._conn: sqlite3.Connection | None = None
        self._closing = False
        self.lock_waits = 0  # busy timeouts waited out so far: for the log and for tests

    async def __call__(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change(conn)` in one transaction on the writer's thread; its return value comes back."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, change)

    def run(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """The same, in the calling thread's time: only ever called on the writer's thread (or in tests)."""
        deadline = time.monotonic() + self.lock_wait_s
        warned = False
        while True:
            conn = self._connection()
            try:
                # IMMEDIATE takes the write lock up front, where the busy timeout applies, so that a read
                # and the write that depends on it (the capacity check and the insert) are one step.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = change(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                if is_disk_full(exc):
                    raise DiskFull(str(exc)) from exc
                if not is_locked(exc):
                    raise
                if self._closing or time.monotonic() >= deadline:
                    log.error("the database stayed locked for %.0f s; giving up on a write", self.lock_wait_s)
                    raise DatabaseBusy() from exc
                if not warned:
                    log.warning("the database is locked by another process; waiting for it")
                    warned = True
                self.lock_waits += 1
                time.sleep(LOCK_RETRY_S)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = database.open_connection(self.path, autocommit=True)
        return self._conn

    async def close(self) -> None:
        """Close the connection once the writes asked for so far are done; a later write reopens it."""
        self._closing = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        finally:
            self._closing = False

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
