"""aiogram FSM storage on the project's SQLite database (table `fsm`), so conversations survive restarts.

The storage opens its own connection to the database file: the job queue writes on the shared connection
from worker threads inside explicit transactions, and a conversation write must neither join nor wait on
one of those. Calls run in a worker thread (`asyncio.to_thread`) because a write may wait on SQLite's busy
timeout while another writer commits, and that wait must not stall the event loop; the rows are tiny, so
the thread hop (tens of microseconds) is the whole cost.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey

from nst_daemon.db import file_of, open_connection

T = TypeVar("T")


def storage_key(key: StorageKey) -> str:
    """One stable string per conversation; every field of StorageKey takes part, None as '-'."""

    def part(value: object) -> str:
        return "-" if value is None else quote(str(value), safe="")

    fields = (key.bot_id, key.chat_id, key.user_id, key.thread_id, key.business_connection_id, key.destiny)
    return "fsm:" + ":".join(part(value) for value in fields)


class SQLiteStorage(BaseStorage):
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        with self._lock:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        # Opened lazily, and again after close(): aiogram's Dispatcher closes its storage every time
        # polling stops, and the bot restarts polling after network failures.
        if self._conn is None:
            # The daemon's pragmas too: without `synchronous = NORMAL` every conversation write fsynced.
            conn = open_connection(Path(self.path))
            conn.execute(
                "create table if not exists fsm "
                "(key text primary key, state text, data text, updated_at real)"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    @classmethod
    def for_database(cls, conn: sqlite3.Connection) -> SQLiteStorage:
        """A storage on the same file as an open connection (the daemon's sqlite_utils `db.conn`)."""
        return cls(file_of(conn))

    # --- BaseStorage ---

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        await self._run(self._write, storage_key(key), {"state": value})

    async def get_state(self, key: StorageKey) -> str | None:
        row = await self._run(self._read, storage_key(key))
        return row[0] if row else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DataNotDictLikeError(f"Data must be a dict or dict-like object, got {type(data).__name__}")
        await self._run(self._write, storage_key(key), {"data": json.dumps(data)})

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        row = await self._run(self._read, storage_key(key))
        return json.loads(row[1]) if row and row[1] else {}

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        # One read-modify-write under the lock, so two updates of one key cannot lose each other's fields.
        return await self._run(self._merge, storage_key(key), dict(data))

    async def close(self) -> None:
        await self._run(self._close)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(connection, *args)` on this storage's connection, off the event loop (user settings)."""
        return await self._run(lambda: fn(self._connection(), *args))

    # --- internals (run in a worker thread, one at a time) ---

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _read(self, key: str) -> tuple[str | None, str | None] | None:
        return self._connection().execute("select state, data from fsm where key = ?", [key]).fetchone()

    def _write(self, key: str, values: dict[str, Any]) -> None:
        conn = self._connection()
        with conn:
            row = self._read(key)
            state, data = (row[0], row[1]) if row else (None, None)
            state = values.get("state", state)
            data = values.get("data", data)
            if state is None and (not data or data == "{}"):
                # Nothing left to remember: drop the row so the table holds live conversations only.
                conn.execute("delete from fsm where key = ?", [key])
                return
            conn.execute(
                "insert into fsm (key, state, data, updated_at) values (?, ?, ?, ?) "
                "on conflict(key) do update set state = excluded.state, data = excluded.data, "
                "updated_at = excluded.updated_at",
                [key, state, data or "{}", time.time()],
            )

    def _merge(self, key: str, update: dict[str, Any]) -> dict[str, Any]:
        row = self._read(key)
        current = json.loads(row[1]) if row and row[1] else {}
        current.update(update)
        self._write(key, {"data": json.dumps(current)})
        return dict(current)
