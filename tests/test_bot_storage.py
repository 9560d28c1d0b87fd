"""The SQLite FSM storage against aiogram's storage contract, and across reopening the database."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey

from nst_daemon import db as database
from nst_daemon.bot.storage import SQLiteStorage, storage_key

KEY = StorageKey(bot_id=42, chat_id=-100, user_id=7)


class Form(StatesGroup):
    name = State()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "nstd.sqlite3"
    database.connect(path).conn.close()  # the real schema, as the daemon creates it
    return path


@pytest.fixture
def storage(db_path: Path) -> SQLiteStorage:
    return SQLiteStorage(db_path)


# --- aiogram's storage behaviours (tests/test_fsm/storage/test_storages.py), ported ---


def test_set_state(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        assert await storage.get_state(key=KEY) is None
        await storage.set_state(key=KEY, state="state")
        assert await storage.get_state(key=KEY) == "state"
        await storage.set_state(key=KEY, state=None)
        assert await storage.get_state(key=KEY) is None
        await storage.close()

    run(scenario())


def test_state_objects_are_stored_as_their_names(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        await storage.set_state(key=KEY, state=Form.name)
        assert await storage.get_state(key=KEY) == "Form:name"
        await storage.close()

    run(scenario())


def test_set_data(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        assert await storage.get_data(key=KEY) == {}
        assert await storage.get_value(storage_key=KEY, dict_key="foo") is None
        assert await storage.get_value(storage_key=KEY, dict_key="foo", default="baz") == "baz"
        await storage.set_data(key=KEY, data={"foo": "bar"})
        assert await storage.get_data(key=KEY) == {"foo": "bar"}
        assert await storage.get_value(storage_key=KEY, dict_key="foo") == "bar"
        await storage.set_data(key=KEY, data={})
        assert await storage.get_data(key=KEY) == {}
        await storage.close()

    run(scenario())


def test_set_data_refuses_non_dicts(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        with pytest.raises(DataNotDictLikeError):
            await storage.set_data(key=KEY, data=[("foo", "bar")])  # type: ignore[arg-type]
        await storage.close()

    run(scenario())


def test_update_data(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        assert await storage.get_data(key=KEY) == {}
        assert await storage.update_data(key=KEY, data={"foo": "bar"}) == {"foo": "bar"}
        assert await storage.update_data(key=KEY, data={}) == {"foo": "bar"}
        assert await storage.get_data(key=KEY) == {"foo": "bar"}
        assert await storage.update_data(key=KEY, data={"baz": "spam"}) == {"foo": "bar", "baz": "spam"}
        assert await storage.get_data(key=KEY) == {"foo": "bar", "baz": "spam"}
        assert await storage.update_data(key=KEY, data={"baz": "test"}) == {"foo": "bar", "baz": "test"}
        assert await storage.get_data(key=KEY) == {"foo": "bar", "baz": "test"}
        await storage.close()

    run(scenario())


def test_returned_data_is_a_copy(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        await storage.set_data(key=KEY, data={"items": [1]})
        data = await storage.get_data(key=KEY)
        data["items"].append(2)
        assert await storage.get_data(key=KEY) == {"items": [1]}
        await storage.close()

    run(scenario())


def test_state_and_data_are_independent(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        await storage.set_state(key=KEY, state="a")
        await storage.set_data(key=KEY, data={"x": 1})
        await storage.set_state(key=KEY, state=None)
        assert await storage.get_data(key=KEY) == {"x": 1}
        await storage.set_state(key=KEY, state="b")
        await storage.set_data(key=KEY, data={})
        assert await storage.get_state(key=KEY) == "b"
        await storage.close()

    run(scenario())


def test_keys_are_isolated_by_every_field(storage: SQLiteStorage) -> None:
    keys = [
        KEY,
        StorageKey(bot_id=43, chat_id=-100, user_id=7),
        StorageKey(bot_id=42, chat_id=-101, user_id=7),
        StorageKey(bot_id=42, chat_id=-100, user_id=8),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, thread_id=5),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, business_connection_id="b:c"),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, destiny="other"),
    ]
    assert len({storage_key(key) for key in keys}) == len(keys)

    async def scenario() -> None:
        for index, key in enumerate(keys):
            await storage.set_state(key=key, state=f"s{index}")
            await storage.set_data(key=key, data={"i": index})
        for index, key in enumerate(keys):
            assert await storage.get_state(key=key) == f"s{index}"
            assert await storage.get_data(key=key) == {"i": index}
        await storage.close()

    run(scenario())


def test_concurrent_updates_lose_nothing(storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        await asyncio.gather(*(storage.update_data(key=KEY, data={f"k{n}": n}) for n in range(50)))
        assert await storage.get_data(key=KEY) == {f"k{n}": n for n in range(50)}
        await storage.close()

    run(scenario())


# --- persistence ---


def test_conversations_survive_reopening(db_path: Path) -> None:
    async def write() -> None:
        storage = SQLiteStorage(db_path)
        await storage.set_state(key=KEY, state=Form.name)
        await storage.set_data(key=KEY, data={"content": {"file_id": "abc", "file_size": 10}, "styles": []})
        # No close(): a crash must not lose what was written.

    async def read() -> tuple[str | None, dict[str, Any]]:
        storage = SQLiteStorage(db_path)
        try:
            return await storage.get_state(key=KEY), await storage.get_data(key=KEY)
        finally:
            await storage.close()

    run(write())
    state, data = run(read())
    assert state == "Form:name"
    assert data == {"content": {"file_id": "abc", "file_size": 10}, "styles": []}


def test_storage_reopens_after_close(storage: SQLiteStorage) -> None:
    """aiogram closes the storage whenever polling stops; the bot may start polling again."""

    async def scenario() -> None:
        await storage.set_state(key=KEY, state="a")
        await storage.close()
        assert await storage.get_state(key=KEY) == "a"
        await storage.close()

    run(scenario())


def test_empty_conversations_leave_no_rows(db_path: Path, storage: SQLiteStorage) -> None:
    async def scenario() -> None:
        await storage.set_state(key=KEY, state="a")
        await storage.set_data(key=KEY, data={"x": 1})
        await storage.set_state(key=KEY, state=None)
        await storage.set_data(key=KEY, data={})
        await storage.close()

    run(scenario())
    db = database.connect(db_path)
    assert db["fsm"].count == 0


def test_for_database_shares_the_daemons_file(db_path: Path) -> None:
    db = database.connect(db_path)
    storage = SQLiteStorage.for_database(db.conn)

    async def scenario() -> None:
        await storage.set_state(key=KEY, state="x")
        await storage.close()

    run(scenario())
    rows = list(db["fsm"].rows)
    assert [(row["key"], row["state"]) for row in rows] == [(storage_key(KEY), "x")]
