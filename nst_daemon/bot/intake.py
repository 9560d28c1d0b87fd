"""Durable intake: every update from an allowed user is in SQLite before Telegram is told it arrived.

Telegram forgets an update once a getUpdates asks for a higher offset. aiogram's own polling asks for
the next batch as soon as it has started a task per update, so a crash (or any error) between that and
the job row lost the photo. The poller (polling.py) therefore stores each batch here first, confirms
it only afterwards, and marks an update `done` when its handling finished; a restart handles the ones
still `pending` again.

A replay must not make a second job for one photo. Each image gets an intake key (update id and file
id) that travels in the job's `reply`, so the job row itself records which update made it, in the same
transaction that creates it; JobStarter looks the key up before it submits a replayed update's image.
The "got it" message sent for a key is recorded here too, so a replay reuses it and none stays stuck.
And a handler moves the conversation on (step 1 -> step 2 of /nst): a replay must see the conversation
as the first handling saw it, or a content photo would come back as a style image. IntakeMiddleware
records that state before the first handling and puts it back before a replay, inside aiogram's per-user
lock, and marks the update done there too, so no later update of the user can slip in between.

The functions run on the conversation storage's connection, off the event loop (SQLiteStorage.call):
a write may wait on SQLite's busy timeout and must not stall the loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiogram import BaseMiddleware
from aiogram.fsm.context import FSMContext
from aiogram.types import TelegramObject

from nst_daemon.bot.storage import SQLiteStorage

# A replay past this many started handlings is given up (with a reply): an update that kills the daemon
# every time must not kill it forever.
MAX_ATTEMPTS = 3
KEEP_DONE_S = 2 * 24 * 3600  # Telegram keeps an unconfirmed update for 24 hours; a done row a while longer


@dataclass
class StoredUpdate:
    update_id: int
    payload: dict[str, Any]
    attempts: int = 1  # counting the handling about to start
    status: dict[str, int] = field(default_factory=dict)
    fsm: dict[str, Any] | None = None  # the conversation before the first handling, once recorded

    @property
    def replay(self) -> bool:
        """Whether an earlier handling of this update started and never finished (a crash)."""
        return self.attempts > 1


class Ticket:
    """The update being handled, for JobStarter: set by the poller in a ContextVar, which aiogram's
    handler chain inherits (it runs in the poller's task), so no handler has to pass it along."""

    def __init__(self, log: IntakeLog, update: StoredUpdate) -> None:
        self.log = log
        self.update = update
        self.finished = False

    def key(self, file_id: str) -> str:
        return f"{self.update.update_id}:{file_id}"

    def status_message(self, key: str) -> int | None:
        return self.update.status.get(key)

    async def remember_status(self, key: str, message_id: int) -> None:
        self.update.status[key] = message_id
        await self.log.storage.call(_remember_status, self.update.update_id, key, message_id)

    async def remember_fsm(self, snapshot: dict[str, Any]) -> None:
        self.update.fsm = snapshot
        await self.log.storage.call(_remember_fsm, self.update.update_id, snapshot)

    async def finish(self, outcome: str) -> None:
        await self.log.finish(self.update.update_id, outcome)
        self.finished = True


current_ticket: ContextVar[Ticket | None] = ContextVar("current_ticket", default=None)


class IntakeLog:
    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage

    async def store(self, updates: list[tuple[int, int, dict[str, Any]]]) -> dict[int, StoredUpdate]:
        """Store a batch (update id, user id, payload) in one transaction; return those to handle now:
        the new ones, and any stored earlier and still pending (Telegram sent it again after a crash)."""
        return await self.storage.call(_store, updates)

    async def unfinished(self) -> list[StoredUpdate]:
        """Updates whose handling started in an earlier run and never finished, oldest first; each one's
        attempt count is raised here, before it is handled again."""
        return await self.storage.call(_unfinished)

    async def finish(self, update_id: int, outcome: str) -> None:
        await self.storage.call(_finish, update_id, outcome)

    async def prune(self, older_than_s: float = KEEP_DONE_S) -> int:
        return await self.storage.call(_prune, older_than_s)


def _stored(row: tuple[Any, ...]) -> StoredUpdate:
    update_id, payload, attempts, status, fsm = row
    return StoredUpdate(
        update_id, json.loads(payload), attempts, json.loads(status or "{}"), json.loads(fsm) if fsm else None
    )


def _store(
    conn: sqlite3.Connection, updates: list[tuple[int, int, dict[str, Any]]]
) -> dict[int, StoredUpdate]:
    now = time.time()
    ids = [update_id for update_id, _, _ in updates]
    with conn:
        # BEGIN IMMEDIATE: the write lock up front, where the busy timeout applies, so the reads below
        # and the inserts are one step.
        conn.execute("BEGIN IMMEDIATE")
        marks = ",".join("?" * len(ids))
        known = {
            row[0]: row
            for row in conn.execute(
                f"select update_id, payload, attempts, status, fsm, state from telegram_updates "
                f"where update_id in ({marks})",
                ids,
            )
        }
        handle: dict[int, StoredUpdate] = {}
        for update_id, user_id, payload in updates:
            row = known.get(update_id)
            if row is None:
                conn.execute(
                    "insert into telegram_updates (update_id, user_id, payload, state, attempts, status, "
                    "received_at) values (?, ?, ?, 'pending', 1, '{}', ?)",
                    [update_id, user_id, json.dumps(payload), now],
                )
                handle[update_id] = StoredUpdate(update_id, payload)
            elif row[5] == "pending":
                # Usually being handled right now (replayed at the start, and Telegram sent it again
                # because it was never confirmed): the poller skips those. Otherwise its earlier handling
                # ended without being marked done, so it counts as a replay; the count in the database
                # is left to the start's replay, which is where a crash loop shows.
                stored = _stored(row[:5])
                stored.attempts += 1
                handle[update_id] = stored
    return handle


def _unfinished(conn: sqlite3.Connection) -> list[StoredUpdate]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(
            "select update_id, payload, attempts, status, fsm from telegram_updates where state = 'pending' "
            "order by update_id"
        ).fetchall()
        conn.execute("update telegram_updates set attempts = attempts + 1 where state = 'pending'")
    updates = [_stored(row) for row in rows]
    for update in updates:
        update.attempts += 1
    return updates


def _finish(conn: sqlite3.Connection, update_id: int, outcome: str) -> None:
    with conn:
        conn.execute(
            "update telegram_updates set state = 'done', outcome = ?, finished_at = ? where update_id = ?",
            [outcome, time.time(), update_id],
        )


def _remember_status(conn: sqlite3.Connection, update_id: int, key: str, message_id: int) -> None:
    with conn:
        conn.execute(
            "update telegram_updates set status = json_set(status, '$.' || json_quote(?), ?) "
            "where update_id = ?",
            [key, message_id, update_id],
        )


def _remember_fsm(conn: sqlite3.Connection, update_id: int, snapshot: dict[str, Any]) -> None:
    with conn:
        conn.execute(
            "update telegram_updates set fsm = ? where update_id = ?", [json.dumps(snapshot), update_id]
        )


def _prune(conn: sqlite3.Connection, older_than_s: float) -> int:
    with conn:
        return conn.execute(
            "delete from telegram_updates where state = 'done' and finished_at < ?",
            [time.time() - older_than_s],
        ).rowcount


class IntakeMiddleware(BaseMiddleware):
    """An update outer middleware, inside aiogram's FSM middleware (registered after it), so it runs
    under the user's event-isolation lock with the conversation loaded."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        ticket = current_ticket.get()
        state: FSMContext | None = data.get("state")
        if ticket is None or state is None:
            return await handler(event, data)
        snapshot = ticket.update.fsm
        if snapshot is not None:
            # Cut off before: start again from the conversation as the first handling found it.
            await state.set_state(snapshot.get("state"))
            await state.set_data(snapshot.get("data") or {})
            data["raw_state"] = snapshot.get("state")
        else:
            await ticket.remember_fsm({"state": data.get("raw_state"), "data": await state.get_data()})
        result = await handler(event, data)
        await ticket.finish("handled")
        return result
