"""Durable intake and replies on failure, in-process: the real BotService and JobQueue, the fake Bot API
(its flood limits on), a fake engine. test_bot_e2e.py kills a real daemon with photos waiting.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from fake_telegram import Call, FakeTelegram
from test_bot_flows import BotHarness, jpeg

from nst_daemon import db as database
from nst_daemon.bot.intake import MAX_ATTEMPTS

pytestmark = pytest.mark.timeout(120)

QUEUE = {"max_pending": 30, "per_user": 10}
USER = 7001


@pytest.fixture
def server() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def harness_for(server: FakeTelegram, state: Path, after: BotHarness | None = None) -> BotHarness:
    """A bot on `state`; `after`: the harness it restarts, whose object store it keeps."""
    harness = BotHarness(server, state, rate_limit_per_minute=60)
    if after is not None:
        harness.store = after.store
    # Allowed before the start: the start replays stored updates, and a user allowed only afterwards
    # would get "this is a private bot" for them (as a user removed while the daemon was down should).
    harness.allow(USER, USER + 1, USER + 2, USER + 3, USER + 4, USER + 5)
    harness.start(**QUEUE)
    return harness


def results(server: FakeTelegram, chat_id: int) -> list[Call]:
    return server.find(lambda c: c.method in ("sendPhoto", "sendDocument") and c.chat_id == chat_id and c.ok)


def wait_results(server: FakeTelegram, chat_id: int, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(results(server, chat_id)) < count:
        assert time.monotonic() < deadline, server.calls[-20:]
        time.sleep(0.1)


def status_messages(server: FakeTelegram, chat_id: int) -> dict[int, str]:
    """Each "got it" message sent to a chat, with the text it shows now."""
    shown: dict[int, str] = {}
    for call in server.find(lambda c: c.chat_id == chat_id and c.ok):
        if call.method == "sendMessage" and "got it" in call.text:
            shown[call.message_id or 0] = call.text
        elif call.method == "editMessageText" and call.message_id in shown:
            shown[call.message_id] = call.text
    return shown


def test_updates_are_stored_before_telegram_is_told(server: FakeTelegram, tmp_path: Path) -> None:
    db_path = tmp_path / "nstd.sqlite3"
    unstored: list[int] = []
    sent: list[int] = []

    def check(offset: int) -> None:
        # The moment Telegram would forget the updates below `offset`: each must be in the database.
        conn = sqlite3.connect(db_path)
        try:
            stored = {row[0] for row in conn.execute("select update_id from telegram_updates")}
        except sqlite3.OperationalError:
            stored = set()
        finally:
            conn.close()
        unstored.extend(update_id for update_id in sent if update_id < offset and update_id not in stored)

    harness = harness_for(server, tmp_path)
    try:
        server.on_confirm = check
        server.delay("getFile", 2.0, times=3)  # handling is still under way when the next poll comes
        for n in range(3):
            sent.append(server.send_photo(USER, jpeg(color=(n * 60, 20, 20)), caption="monet")["update_id"])
        server.wait_confirmed(sent[-1])
        wait_results(server, USER, 3)
        assert unstored == []
        assert len(harness.jobs_of(USER)) == 3
    finally:
        server.on_confirm = None
        harness.close()


def test_photos_cut_off_mid_intake_become_one_job_each_after_a_restart(
    server: FakeTelegram, tmp_path: Path
) -> None:
    users = [USER, USER + 1, USER + 2]  # one user's updates are handled one at a time: three users
    first = harness_for(server, tmp_path)
    server.delay("getFile", 60.0, times=100)  # every download hangs: all three photos are mid-intake
    try:
        ids = [server.send_photo(user, jpeg(color=(user % 200, 90, 20)), caption="monet") for user in users]
        server.wait_confirmed(ids[-1]["update_id"])
        deadline = time.monotonic() + 30
        while not all(status_messages(server, user) for user in users):
            assert time.monotonic() < deadline, server.calls[-10:]
            time.sleep(0.1)
        assert [first.jobs_of(user) for user in users] == [[], [], []]
    finally:
        first.close()  # the handlers are cut off: their updates stay pending
    server.delays.clear()

    second = harness_for(server, tmp_path, after=first)
    try:
        for user in users:
            wait_results(server, user, 1)
        time.sleep(1.5)  # anything sent twice would show by now
        for user in users:
            assert len(results(server, user)) == 1
            assert len(second.jobs_of(user)) == 1
            # The replay used the photo's "got it" message: one in all, and it does not stay "preparing…".
            assert len(status_messages(server, user)) == 1
        deadline = time.monotonic() + 20
        while any("got it" in text for user in users for text in status_messages(server, user).values()):
            assert time.monotonic() < deadline, [status_messages(server, user) for user in users]
            time.sleep(0.2)
    finally:
        second.close()


def test_a_replay_after_the_job_was_made_makes_no_second_job(
    server: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = harness_for(server, tmp_path)
    first.runner.seconds = 5  # still running when the crash comes

    async def crash_before_finishing(update_id: int, outcome: str) -> None:
        await asyncio.Event().wait()  # the process "dies" after the job row, before the update is done

    assert first.bot is not None
    monkeypatch.setattr(first.bot.intake, "finish", crash_before_finishing)
    try:
        server.send_photo(USER, jpeg(), caption="monet")
        deadline = time.monotonic() + 30
        while not first.jobs_of(USER):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        first.close()

    second = harness_for(server, tmp_path, after=first)
    try:
        wait_results(server, USER, 1)
        time.sleep(1.5)
        assert len(second.jobs_of(USER)) == 1
        assert len(results(server, USER)) == 1
        assert len(status_messages(server, USER)) == 1
    finally:
        second.close()


def test_a_full_disk_during_intake_gets_a_reply_and_the_bot_goes_on(
    server: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = harness_for(server, tmp_path)
    real_put = harness.store.put_object

    def disk_full(**kwargs: Any) -> dict[str, Any]:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(harness.store, "put_object", disk_full)
        mark = server.mark()
        server.send_photo(USER, jpeg(), caption="monet")
        server.wait_text(USER, r"^Monet: the server is out of disk space; try again later$", since=mark)
        assert harness.jobs_of(USER) == []

        monkeypatch.setattr(harness.store, "put_object", real_put)
        server.send_photo(USER, jpeg(), caption="monet")
        wait_results(server, USER, 1)
    finally:
        harness.close()


def test_an_error_outside_the_job_start_gets_a_reply(
    server: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = harness_for(server, tmp_path)
    assert harness.bot is not None
    storage = harness.bot.storage
    real_set_state = storage.set_state
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    async def failing_set_state(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        await real_set_state(*args, **kwargs)

    try:
        monkeypatch.setattr(storage, "set_state", failing_set_state)
        mark = server.mark()
        server.send_text(USER, "/nst")  # saving the flow's state fails
        reply = server.wait_text(USER, "didn't go through", since=mark)
        assert (
            reply.text == "Sorry, that didn't go through: the server is out of disk space; try again later."
        )

        # Telegram refuses the "got it" message with a long flood wait: the photo still gets an answer.
        server.fail("sendMessage", times=1, status=429, retry_after=30, chat_id=USER + 1)
        mark = server.mark()
        server.send_photo(USER + 1, jpeg(), caption="monet")
        reply = server.wait_text(USER + 1, "didn't go through", since=mark)
        assert "slow down" in reply.text
    finally:
        harness.close()


def test_a_burst_with_429s_loses_no_photo_and_sends_no_result_twice(
    server: FakeTelegram, tmp_path: Path
) -> None:
    harness = harness_for(server, tmp_path)
    harness.runner.seconds = 0.05
    users = [USER + n for n in range(6)]
    try:
        for round_ in range(3):
            for user in users:
                server.send_photo(user, jpeg(color=(round_ * 80, user % 200, 50)), caption="monet")
        # Telegram's own 429s on top of the limits, while the burst is under way.
        server.fail(None, times=12, status=429, retry_after=1)
        for user in users:
            wait_results(server, user, 3, timeout=90)
        time.sleep(2)
        for user in users:
            assert len(results(server, user)) == 3, user
            assert len(harness.jobs_of(user)) == 3, user
        # The bot kept to Telegram's limits by itself: the only 429s were the injected ones.
        assert server.flood_refusals() == []
    finally:
        harness.close()


def test_an_update_cut_off_again_and_again_is_given_up_with_a_reply(
    server: FakeTelegram, tmp_path: Path
) -> None:
    """Stored updates left pending by earlier runs: one cut off once is handled, one cut off every time
    (MAX_ATTEMPTS handlings started) is answered "send it again" instead of a fourth try."""
    db = database.connect(tmp_path / "nstd.sqlite3")
    for update_id, user, attempts in ((998, USER, 1), (999, USER + 1, MAX_ATTEMPTS)):
        message = {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": user, "type": "private"},
            "from": FakeTelegram.user(user),
            "text": "/start",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        }
        db["telegram_updates"].insert(
            {
                "update_id": update_id,
                "user_id": user,
                "payload": json.dumps({"update_id": update_id, "message": message}),
                "state": "pending",
                "attempts": attempts,
                "status": "{}",
                "received_at": time.time(),
            }
        )
    db.conn.close()
    harness = harness_for(server, tmp_path)
    try:
        server.wait_text(USER, "turn photos into paintings")
        server.wait_text(USER + 1, "stopped several times while taking that message")
        assert not server.find(lambda c: c.chat_id == USER + 1 and "paintings" in c.text)
        check = database.connect(tmp_path / "nstd.sqlite3")
        deadline = time.monotonic() + 10
        while check.execute("select count(*) from telegram_updates where state = 'pending'").fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        outcomes = dict(check.execute("select update_id, outcome from telegram_updates").fetchall())
        check.conn.close()
        assert outcomes == {998: "handled", 999: "gave up"}
    finally:
        harness.close()


def test_a_database_locked_longer_than_the_busy_timeout_loses_no_photo(
    server: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the write lock past SQLite's busy timeout while a photo comes in: the update
    is not confirmed until it could be stored, so it is taken once the lock is gone. Scaled down: a 1 s
    busy timeout (10 s in the daemon), and the lock held until storing the batch has failed."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 1000)
    caplog.set_level(logging.WARNING, logger="nst_daemon.bot.polling")
    harness = harness_for(server, tmp_path)
    holder = sqlite3.connect(tmp_path / "nstd.sqlite3", isolation_level=None)
    try:
        wait_until(lambda: server.polls, message="the bot to poll")  # its replay at the start is done
        holder.execute("BEGIN IMMEDIATE")
        update = server.send_photo(USER, jpeg(), caption="monet")["update_id"]
        wait_until(
            lambda: any("polling failed" in r.message and "locked" in r.message for r in caplog.records),
            message="storing the update to give up on the lock",
        )
        assert server.confirmed_offset <= update  # not confirmed while it could not be stored
        holder.execute("ROLLBACK")
        wait_results(server, USER, 1)
        assert len(harness.jobs_of(USER)) == 1
    finally:
        holder.close()
        harness.close()
