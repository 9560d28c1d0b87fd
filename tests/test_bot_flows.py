"""The bot in-process against the fake Bot API: the real JobQueue and BotService, a fake engine runner.

Fast (no torch, no subprocess), so it covers the conversation in detail; test_bot_e2e.py runs the same
paths through a real `nstd run` with real (tiny) models.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from fake_telegram import DEFAULT_TOKEN, Call, FakeTelegram
from PIL import Image

from nst_daemon import db as database
from nst_daemon import imaging
from nst_daemon.backoff import Backoff
from nst_daemon.bot import BotService, status_messages, texts
from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled, ModelNotInstalled, NstdError
from nst_daemon.jobs import Job, JobQueue, RunResult, delivery

OWNER = 1000  # every test plays its own users (ids 1001...), so one daemon serves them all


def jpeg(width: int = 120, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG")
    return buffer.getvalue()


def png_rgba(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 128, 255, 100)).save(buffer, "PNG")
    return buffer.getvalue()


class MemoryStore:
    """The few S3 client calls the queue makes, in a dict."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        with self._lock:
            self.objects[Key] = bytes(Body)
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        with self._lock:
            return {"Body": io.BytesIO(self.objects[Key])}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **_: Any) -> dict[str, Any]:
        with self._lock:
            return {"Contents": [{"Key": key} for key in sorted(self.objects) if key.startswith(Prefix)]}

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for item in Delete["Objects"]:
                self.objects.pop(item["Key"], None)
        return {}


class FakeRunner:
    """Engine stand-in: takes `seconds` per job, reports progress, honours cancel; scripted failures."""

    def __init__(self) -> None:
        self.seconds = 0.2
        self.slow: dict[str, float] = {}  # owner -> seconds for that user's jobs
        self.missing: set[str] = set()  # styles whose model is "not installed"
        self.broken: set[str] = set()  # styles whose engine raises
        self.shapes: dict[str, tuple[int, int]] = {}  # style -> result size
        self.seen: list[Job] = []

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: Callable[[float], None],
        cancel: threading.Event,
    ) -> RunResult:
        self.seen.append(job)
        style = job.styles[0] if job.styles else "nst"
        if style in self.missing:
            raise ModelNotInstalled(f"style_{style}")
        if style in self.broken:
            raise RuntimeError("boom")
        seconds = self.slow.get(job.owner, self.seconds)
        steps = 20
        for step in range(steps):
            if cancel.is_set():
                raise Cancelled()
            time.sleep(seconds / steps)
            progress((step + 1) / steps)
        size = self.shapes.get(style) or imaging.load_image(content).size
        image = Image.new("RGB", size, (10, 200, 10))
        return RunResult(image=image, report={"device": "cpu"})

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


class BotHarness:
    """Queue, worker, redelivery and BotService in an event loop on a background thread."""

    def __init__(self, server: FakeTelegram, state_dir: Path, **telegram: Any) -> None:
        self.server = server
        self.state_dir = state_dir
        self.telegram = {"allowed_users": [], "rate_limit_per_minute": 5, **telegram}
        self.runner = FakeRunner()
        self.store = MemoryStore()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bot-harness", daemon=True)
        self.tasks: list[asyncio.Task[Any]] = []
        self.bot: BotService | None = None
        self.queue: JobQueue | None = None
        self.db: Any = None

    def settings(self, **queue: Any) -> Settings:
        return Settings.model_validate(
            {
                "paths": {"state_dir": str(self.state_dir), "models_dir": str(self.state_dir / "models")},
                "telegram": {"api_base": self.server.base_url, **self.telegram},
                "queue": {"max_pending": 8, "per_user": 2, **queue},
                "nst": {"preset": "fast"},
            }
        )

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def start(self, token: str = DEFAULT_TOKEN, **queue: Any) -> BotHarness:
        if not self.thread.is_alive():
            self.thread.start()

        async def boot() -> None:
            settings = self.settings(**queue)
            self.db = database.connect(settings.db_path)
            database.add_user(self.db, OWNER)
            self.queue = JobQueue(self.db, self.store, "nstd", settings, self.runner)
            await self.queue.recover()
            self.bot = BotService(settings, self.db, self.queue, token)
            await self.bot.start()
            self.tasks = [
                asyncio.create_task(self.queue.run_worker()),
                asyncio.create_task(self.queue.redelivery_loop(interval_s=0.5)),
                asyncio.create_task(self.bot.run()),
            ]

        self.call(boot())
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self.queue is not None and self.bot is not None
            await self.queue.shutdown(1)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.bot.stop()
            self.db.conn.close()

        if self.bot is not None:
            self.call(shutdown())
            self.bot = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _own_connection(self) -> Any:
        # The test thread gets its own connection, as `nstd users add` does: the daemon's connection
        # belongs to its event loop, and a second thread committing on it would end the loop's transaction.
        # It works before start() too, so users can be allowed before stored updates are replayed.
        return database.connect(self.settings().db_path)

    def allow(self, *user_ids: int) -> None:
        conn = self._own_connection()
        try:
            for user_id in user_ids:
                database.add_user(conn, user_id)
        finally:
            conn.conn.close()

    def jobs_of(self, user_id: int) -> list[dict[str, Any]]:
        conn = self._own_connection()
        try:
            return list(conn["jobs"].rows_where("owner = ?", [str(user_id)], order_by="id"))
        finally:
            conn.conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture(scope="module")
def harness(server: FakeTelegram, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotHarness]:
    bot = BotHarness(server, tmp_path_factory.mktemp("bot")).start()
    yield bot
    bot.close()


@pytest.fixture
def own_server() -> Iterator[FakeTelegram]:
    """A server for a test that runs its own bot: two bots polling one server would split its updates."""
    with FakeTelegram() as fake:
        yield fake


_next_user = iter(range(1001, 100000))


@pytest.fixture
def user(harness: BotHarness) -> int:
    """A fresh allowed user for one test."""
    user_id = next(_next_user)
    harness.allow(user_id)
    return user_id


def result_call(server: FakeTelegram, chat_id: int, since: int = 0, timeout: float = 20) -> Call:
    return server.wait_for(
        lambda call: call.method in ("sendPhoto", "sendDocument") and call.chat_id == chat_id and call.ok,
        timeout,
        since,
    )


# --- commands ---


def test_start_registers_commands_and_offers_styles(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    assert {command["command"] for command in server.commands} >= {
        "start", "help", "styles", "nst", "cancel", "status", "settings", "go",
    }  # fmt: skip
    mark = server.mark()
    server.send_text(user, "/start")
    call = server.wait_text(user, "turn photos into paintings", since=mark)
    assert "style:nst" in call.button_data and "style:monet" in call.button_data
    assert len(call.button_data) == 7


def test_help_and_styles(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/help")
    call = server.wait_text(user, "How to use me", since=mark)
    assert "/nst" in call.text and "/settings" in call.text
    server.send_text(user, "/styles")
    call = server.wait_text(user, "^Styles", since=mark)
    for style in ("monet", "cezanne", "ukiyoe", "vangogh", "summer2winter", "winter2summer"):
        assert f"• {style} " in call.text


def test_unknown_command_and_chatter(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/frobnicate")
    server.wait_text(user, "don't know that command", since=mark)
    server.send_text(user, "hello there")
    server.wait_text(user, "Send me a photo", since=mark)


# --- quick paths ---


def test_caption_names_a_style(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    message = server.send_photo(user, jpeg(400, 300), caption="  MoNeT ")
    result = result_call(server, user, mark)
    assert result.method == "sendPhoto"
    assert "Monet" in result.text and "on cpu" in result.text and "Send a new image" in result.text
    assert Image.open(io.BytesIO(result.files["photo"])).size == (400, 300)
    # The largest PhotoSize was fetched, not a thumbnail.
    largest = message["photo"][-1]["file_id"]
    assert server.find(lambda call: call.method == "getFile", mark)[0].params["file_id"] == largest
    # One status message, edited in place and finished.
    status = server.sent(user, "sendMessage", mark)[0]
    server.wait_text(user, "Monet: done in", since=mark)
    edits = server.find(lambda c: c.method == "editMessageText" and c.message_id == status.message_id, mark)
    assert edits and all(call.chat_id == user for call in edits)
    job = harness.jobs_of(user)[-1]
    assert job["state"] == "done" and job["delivery"] == "delivered"
    assert json.loads(job["styles"]) == ["monet"]
    assert json.loads(job["params"])["preset"] == "fast"


def test_uncaptioned_photo_asks_for_a_style(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_photo(user, jpeg())
    question = server.wait_text(user, "Which style", since=mark)
    assert "style:cezanne" in question.button_data and "style:nst" in question.button_data
    query = server.press(user, "style:cezanne")
    server.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query)
    result = result_call(server, user, mark)
    assert "Cézanne" in result.text


def test_style_button_first_then_photo(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/start")
    server.wait_text(user, "turn photos into paintings", since=mark)
    server.press(user, "style:ukiyoe")
    server.wait_text(user, "Ukiyo-e it is", since=mark)
    server.send_text(user, "what now?")
    server.wait_text(user, "Send a photo to paint in the Ukiyo-e style", since=mark)
    server.send_photo(user, jpeg())
    assert "Ukiyo-e" in result_call(server, user, mark).text


def test_image_document_is_used_uncompressed(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_document(user, png_rgba(), file_name="shot.png", mime_type="image/png", caption="vangogh")
    result = result_call(server, user, mark)
    assert "Van Gogh" in result.text


def test_album_with_an_unknown_caption_gets_one_reply(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    mark = server.mark()
    updates = [message["update_id"] for message in server.send_album(user, [jpeg(), jpeg(), jpeg()], "dali")]
    server.wait_text(user, 'know the style "dali"', since=mark)
    server.wait_confirmed(updates[-1])
    time.sleep(0.3)
    assert len(server.sent(user, since=mark)) == 1


def test_album_captioned_nst_is_content_then_styles(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    mark = server.mark()
    server.send_album(user, [jpeg(), jpeg(color=(0, 0, 0)), jpeg(color=(9, 99, 199))], caption="NST")
    server.wait_text(user, "Got 2 style images", since=mark)
    server.send_text(user, "/go")
    assert "(2 style images)" in result_call(server, user, mark).text


def test_album_with_a_caption_styles_every_photo(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    mark = server.mark()
    server.send_album(user, [jpeg(color=(255, 0, 0)), jpeg(color=(0, 0, 255))], caption="summer2winter")
    server.wait_for(lambda c: len(server.sent(user, "sendPhoto", mark)) == 2, timeout=20)
    assert [json.loads(job["styles"]) for job in harness.jobs_of(user)] == [["summer2winter"]] * 2


# --- input errors ---


def test_input_errors_get_clear_replies(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_document(user, b"%PDF-1.4 ...", file_name="doc.pdf", mime_type="application/pdf")
    refused = server.wait_text(user, r"not an image \(application/pdf\)", since=mark)
    # The error handler answers an input problem in its own words, not as a server failure.
    assert refused.text == texts.NOT_AN_IMAGE.format(mime="application/pdf")
    big = server.send_document(
        user, b"x" * 100, file_name="huge.png", mime_type="image/png", file_size=25 << 20
    )
    server.wait_text(user, "too big.*20 MB.*smaller file", since=mark)
    assert not server.find(
        lambda c: c.method == "getFile" and c.params.get("file_id") == big["document"]["file_id"], mark
    )
    server.send_sticker(user)
    server.wait_text(user, "send a photo or an image file", since=mark)
    mark2 = server.mark()
    server.send_voice(user)
    server.wait_text(user, "send a photo or an image file", since=mark2)
    server.send_photo(user, jpeg(), caption="picasso")
    call = server.wait_text(user, 'don\'t know the style "picasso"', since=mark)
    assert "monet" in call.text and "winter2summer" in call.text
    server.send_document(user, b"\x89PNG\r\n\x1a\n garbage", file_name="broken.png", caption="monet")
    server.wait_text(user, "Monet: .*(not an image|damaged|cannot be used)", since=mark)
    assert harness.jobs_of(user) == []
    # The conversation is still usable.
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark)


def test_model_not_installed_and_engine_failure(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    harness.runner.missing.add("vangogh")
    harness.runner.broken.add("winter2summer")
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="vangogh")
    call = server.wait_text(user, "isn't available", since=mark)
    assert "nstd models pull style_vangogh" in call.text and "owner" in call.text
    server.send_photo(user, jpeg(), caption="winter2summer")
    server.wait_text(user, "didn't work: the engine failed: RuntimeError: boom", since=mark)
    server.wait_text(user, "Winter → Summer: failed", since=mark)
    assert not server.sent(user, "sendPhoto", mark)


def test_result_outside_photo_limits_goes_as_a_document(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    harness.runner.shapes["cezanne"] = (2100, 100)  # ratio 21 > 20
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="cezanne")
    result = result_call(server, user, mark)
    assert result.method == "sendDocument" and "Cézanne" in result.text
    assert Image.open(io.BytesIO(result.files["document"])).size == (2100, 100)


# --- multi-style NST ---


def test_nst_flow_with_an_album_of_styles(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/nst")
    server.wait_text(user, "Step 1 of 2", since=mark)
    server.send_text(user, "hm")
    server.wait_text(user, "content photo first", since=mark)
    server.send_photo(user, jpeg(100, 100))
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_album(user, [jpeg(color=(1, 2, 3)), jpeg(color=(9, 9, 9))])
    server.wait_text(user, "Got 2 style images", since=mark)
    # One acknowledgement for the album, edited as its photos arrived.
    assert len(server.find(lambda c: c.method == "sendMessage" and "Got 1 style image" in c.text, mark)) == 1
    assert not server.find(lambda c: c.method == "sendMessage" and "Got 2 style images" in c.text, mark)
    server.press(user, "run:nst")
    result = result_call(server, user, mark)
    assert "Multi-style NST (2 style images)" in result.text
    job = harness.jobs_of(user)[-1]
    assert job["engine"] == "nst" and len(json.loads(job["input_keys"])) == 3
    server.send_text(user, "/go")
    server.wait_text(user, "nothing to stylize", since=mark)


def test_go_command_and_style_documents(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="nst")  # a captioned shortcut into step 2
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_text(user, "/go")
    server.wait_text(user, "at least one style image", since=mark)
    server.send_document(user, png_rgba(), file_name="style.png")
    server.wait_text(user, "Got 1 style image", since=mark)
    server.send_text(user, "/go")  # the machine's default engine: Instant or Multi-style NST
    assert "(1 style image) · " in result_call(server, user, mark).text


def test_nst_bad_style_image_is_dropped_and_flow_goes_on(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    mark = server.mark()
    server.send_text(user, "/nst")
    server.send_photo(user, jpeg())
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_document(user, b"not really a png", file_name="s.png", mime_type="image/png")
    server.send_photo(user, jpeg(color=(0, 255, 0)))
    server.wait_text(user, "Got 2 style images", since=mark)
    server.send_text(user, "/go")
    server.wait_text(user, "dropped that style image", since=mark)
    server.send_text(user, "/go")
    assert "(1 style image)" in result_call(server, user, mark).text


# --- cancel, status, settings ---


def test_cancel_leaves_a_flow(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/nst")
    server.wait_text(user, "Step 1 of 2", since=mark)
    server.send_text(user, "/start")
    server.wait_text(user, "in the middle of", since=mark)
    server.send_text(user, "/cancel")
    server.wait_text(user, "dropped the multi-style NST", since=mark)
    server.send_text(user, "/cancel")
    server.wait_text(user, "Nothing to cancel", since=mark)


def test_cancel_stops_a_running_job(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    harness.runner.slow[str(user)] = 30
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    server.wait_text(user, r"stylizing… \d+%", since=mark)
    server.send_text(user, "/status")
    status = server.wait_text(user, "Your jobs:", since=mark)
    assert "/cancel_" in status.text and "stylizing" in status.text
    server.send_text(user, "/cancel")
    server.wait_text(user, r"Stopping job #\d+", since=mark)
    server.wait_text(user, r"Job #\d+ cancelled", since=mark)
    server.wait_text(user, "Monet: cancelled", since=mark)
    assert harness.jobs_of(user)[-1]["state"] == "cancelled"
    assert not server.sent(user, "sendPhoto", mark)


def test_cancel_button_and_queue_positions(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    other = next(_next_user)
    harness.allow(other)
    harness.runner.slow[str(other)] = 30
    mark = server.mark()
    server.send_photo(other, jpeg(), caption="monet")
    server.wait_text(other, "stylizing", since=mark)
    server.send_photo(user, jpeg(), caption="cezanne")
    queued = server.wait_text(user, r"queued, position 2 of 2", since=mark)
    job_id = harness.jobs_of(user)[-1]["id"]
    assert f"cancel:{job_id}" in queued.button_data
    server.send_text(user, "/status")
    server.wait_text(user, "position 2 of 2", since=mark)
    query = server.press(user, f"cancel:{job_id}")
    toast = server.wait_for(
        lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query
    )
    assert toast.params["text"] == f"Cancelled job #{job_id} (Cézanne)."
    server.wait_text(user, "Cézanne: cancelled", since=mark)
    server.send_text(other, f"/cancel_{job_id}")  # not theirs
    server.wait_text(other, "not one of your jobs", since=mark)
    server.send_text(other, "/cancel")
    server.wait_text(other, "cancelled", since=mark)


def test_queue_positions_change_when_a_job_leaves_not_when_one_joins(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    first, last = next(_next_user), next(_next_user)
    harness.allow(first, last)
    harness.runner.slow[str(first)] = 6
    mark = server.mark()
    server.send_photo(first, jpeg(), caption="monet")
    server.wait_text(first, "stylizing", since=mark)
    server.send_photo(user, jpeg(), caption="monet")
    server.wait_text(user, r"queued, position 2 of 2", since=mark)
    server.send_photo(last, jpeg(), caption="monet")
    server.wait_text(last, r"queued, position 3 of 3", since=mark)
    # The first job finishes, the user's starts: the last one moves up.
    server.wait_text(last, r"queued, position 2 of 2", since=mark)
    server.wait_text(user, "done", since=mark)
    # A job joining behind the user's did not re-edit the user's status message.
    assert not [text for text in server.texts(user, since=mark) if "of 3" in text]


def test_settings_are_remembered_and_used(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/settings")
    call = server.wait_text(user, "Quality .*: fast", since=mark)
    assert "preset:best" in call.button_data
    server.press(user, "preset:best")
    server.wait_for(
        lambda c: c.method == "answerCallbackQuery" and c.params.get("text") == "Saved", since=mark
    )
    server.wait_text(user, "Quality .*: best", since=mark)
    again = server.press(user, "preset:best")  # same text and buttons: "message is not modified"
    server.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == again)
    server.wait_for(
        lambda c: c.method == "editMessageText" and c.status == 400 and c.chat_id == user, since=mark
    )
    server.press(user, "colors:1")
    server.wait_text(user, "Preserve colours: on", since=mark)
    row = harness.db["user_settings"].get(user)
    assert json.loads(row["data"]) == {
        "preset": "best", "preserve_colors": True, "preview": True, "engine": "", "strength": 1.0,
    }  # fmt: skip
    server.send_photo(user, jpeg(), caption="ukiyoe")
    result_call(server, user, mark)
    assert json.loads(harness.jobs_of(user)[-1]["params"])["preset"] == "best"
    assert json.loads(harness.jobs_of(user)[-1]["params"])["preserve_colors"] is True


# --- access, limits ---


def test_strangers_are_told_once_and_get_nothing(server: FakeTelegram, harness: BotHarness) -> None:
    stranger = 666_000_1
    mark = server.mark()
    server.send_text(stranger, "/start")
    call = server.wait_text(stranger, "private bot", since=mark)
    assert f"nstd users add {stranger}" in call.text and str(stranger) in call.text
    server.send_photo(stranger, jpeg(), caption="monet")
    query = server.press(stranger, "style:monet", message=call.response["result"])
    server.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query)
    update = server.send_text(stranger, "/help")["update_id"]
    server.wait_confirmed(update)
    time.sleep(0.3)
    assert len(server.sent(stranger, since=mark)) == 1
    assert not server.find(lambda c: c.method == "getFile", mark)
    assert harness.jobs_of(stranger) == []


def test_busy_and_rate_limit(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    harness.runner.slow[str(user)] = 3
    mark = server.mark()
    for _ in range(3):
        server.send_photo(user, jpeg(), caption="monet")
    server.wait_text(user, "Busy: you already have 2 jobs", since=mark)
    for _ in range(3):
        server.send_photo(user, jpeg(), caption="monet")
    server.wait_text(user, "Slow down.*5 images a minute", since=mark)
    server.wait_for(lambda c: len(server.sent(user, "sendPhoto", mark)) >= 2, timeout=30)
    assert len(harness.jobs_of(user)) <= 4


def wait_idle(harness: BotHarness, timeout: float = 40) -> None:
    """Until the module's queue is empty: a test that counts queue slots must not share them."""
    deadline = time.monotonic() + timeout
    while harness.queue and harness.queue.active_jobs():
        assert time.monotonic() < deadline, harness.queue.active_jobs()
        time.sleep(0.2)


def test_full_queue_says_busy_and_loses_nothing(server: FakeTelegram, harness: BotHarness) -> None:
    users = [next(_next_user) for _ in range(5)]
    harness.allow(*users)
    wait_idle(harness)  # an earlier test's jobs (paced by the flood limits) may still be running
    for user in users:
        harness.runner.slow[str(user)] = 60  # nothing finishes while the queue fills
    mark = server.mark()
    for user in users:  # 10 submissions at once into a queue of 8
        server.send_photo(user, jpeg(), caption="monet")
        server.send_photo(user, jpeg(), caption="monet")

    def outcomes() -> list[str]:
        """The latest text of each status message that says busy, queued or running (one per submission;
        the job that starts at once is never shown as queued: its first edit already says stylizing)."""
        calls = server.find(lambda c: c.chat_id in users and c.ok and c.method == "editMessageText", mark)
        shown = ("Busy:", "queued", "stylizing")
        latest = {(c.chat_id, c.message_id): c.text for c in calls if any(s in c.text for s in shown)}
        return list(latest.values())

    deadline = time.monotonic() + 30
    while len(outcomes()) < 10:
        assert time.monotonic() < deadline, outcomes()
        time.sleep(0.2)
    busy = [text for text in outcomes() if "Busy:" in text]
    assert busy == ["Monet: Busy: the queue is full (8 jobs waiting); try again in a few minutes."] * 2
    assert sum(len(harness.jobs_of(user)) for user in users) == 8
    for user in users:
        server.send_text(user, "/cancel")
    deadline = time.monotonic() + 30
    while harness.queue and harness.queue.active_jobs():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = [job["state"] for user in users for job in harness.jobs_of(user)]
    assert cancelled == ["cancelled"] * 8


# --- Telegram failures ---


def test_flood_control_on_the_result(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    server.fail("sendPhoto", times=3, status=429, retry_after=1, chat_id=user)
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark, timeout=30)
    time.sleep(1)
    attempts = server.find(lambda c: c.method == "sendPhoto" and c.chat_id == user, mark)
    assert [call.status for call in attempts] == [429, 429, 429, 200]
    assert attempts[-1].at - attempts[0].at >= 2.9


def test_long_flood_wait_is_left_to_the_queue(
    server: FakeTelegram, harness: BotHarness, user: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry_after too long to sleep through inside the worker: the queue redelivers later, once."""
    monkeypatch.setattr(delivery, "REDELIVERY", Backoff((0.5, 1.0, 2.0, 5.0)))
    server.fail("sendPhoto", times=1, status=429, retry_after=60, chat_id=user)
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark, timeout=30)
    time.sleep(1)
    attempts = server.find(lambda c: c.method == "sendPhoto" and c.chat_id == user, mark)
    assert [call.status for call in attempts] == [429, 200]
    assert harness.jobs_of(user)[-1]["delivery_attempts"] == 2


def test_status_edits_are_throttled(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    harness.runner.slow[str(user)] = 7
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark, timeout=30)
    server.wait_text(user, "Monet: done in", since=mark)
    status_id = server.sent(user, "sendMessage", mark)[0].message_id
    edits = server.find(
        lambda c: c.method == "editMessageText" and c.chat_id == user and c.message_id == status_id, mark
    )
    assert len(edits) >= 3
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(edits)]
    assert min(gaps) >= 2.9, [(call.text, round(call.at, 2)) for call in edits]


def test_a_quick_job_gets_one_status_edit(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    """The first edit waits a second, so queued → stylizing → done within it is one edit, not three
    racing the result to the chat."""
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    result = result_call(server, user, mark)
    done = server.wait_text(user, "Monet: done in", since=mark)
    status = server.sent(user, "sendMessage", mark)[0]
    edits = server.find(lambda c: c.method == "editMessageText" and c.message_id == status.message_id, mark)
    assert [call.text for call in edits] == [done.text]
    assert result.at < done.at and done.at - status.at >= status_messages.FIRST_EDIT_AFTER_S - 0.1


def test_the_status_message_does_not_hold_up_the_download(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    """Sent together: over a slow link the photo is fetched while "got it" is still on its way."""
    server.delay("sendMessage", 1.0)
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    result_call(server, user, mark)
    status = server.sent(user, "sendMessage", mark)[0]
    download = server.find(lambda c: c.method == "download", mark)[0]
    assert download.at < status.at  # calls are logged when answered: the download finished first
    assert "got it" in status.text


def wait_running(harness: BotHarness, user: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = harness.jobs_of(user)
        if rows and rows[-1]["state"] == "running":
            return rows[-1]["id"]
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_result_after_an_outage_arrives_once(
    server: FakeTelegram, harness: BotHarness, user: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue's backoff, shortened.
    monkeypatch.setattr(delivery, "REDELIVERY", Backoff((0.5, 1.0, 2.0, 5.0)))
    harness.runner.slow[str(user)] = 2
    mark = server.mark()
    server.send_photo(user, jpeg(), caption="monet")
    job_id = wait_running(harness, user)
    server.go_down()
    try:
        deadline = time.monotonic() + 20
        while harness.queue.get(job_id).delivery_attempts < 1:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert harness.queue.get(job_id).delivery == "pending"  # type: ignore[union-attr]
    finally:
        server.come_up()
    result_call(server, user, mark, timeout=30)
    time.sleep(1)
    assert len(server.sent(user, "sendPhoto", mark)) == 1
    assert harness.queue.get(job_id).delivery == "delivered"  # type: ignore[union-attr]


def test_blocked_user_is_not_retried_forever(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    harness.runner.slow[str(user)] = 1

    server.send_photo(user, jpeg(), caption="monet")
    job_id = wait_running(harness, user)
    server.block(user)
    deadline = time.monotonic() + 20
    while harness.queue.get(job_id).delivery != "failed":  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_refused_token_is_one_clear_error(own_server: FakeTelegram, tmp_path: Path) -> None:
    harness = BotHarness(own_server, tmp_path)
    try:
        with pytest.raises(NstdError, match=r"refused the bot token \(401 Unauthorized\)"):
            harness.start(token="123:wrong-token")
    finally:
        harness.loop.call_soon_threadsafe(harness.loop.stop)
        harness.thread.join(10)


def test_telegram_down_at_start_is_not_fatal(own_server: FakeTelegram, tmp_path: Path) -> None:
    own_server.go_down()
    harness = BotHarness(own_server, tmp_path).start()
    try:
        time.sleep(1)
        own_server.come_up()
        own_server.wait_for(lambda c: c.method == "setMyCommands", timeout=30)
        mark = own_server.mark()
        own_server.send_text(OWNER, "/start")
        own_server.wait_text(OWNER, "turn photos into paintings", since=mark, timeout=30)
    finally:
        harness.close()


def test_conversation_survives_a_restart(own_server: FakeTelegram, tmp_path: Path, caplog: Any) -> None:
    server = own_server
    caplog.set_level(logging.DEBUG)
    harness = BotHarness(server, tmp_path).start()
    try:
        user = 999_001
        harness.allow(user)
        mark = server.mark()
        server.send_text(user, "/nst")
        update = server.send_photo(user, jpeg())["update_id"]
        server.wait_text(user, "Step 2 of 2", since=mark)
        server.wait_confirmed(update)
        harness.stop()
        harness.start()
        server.send_photo(user, jpeg(color=(0, 0, 0)))
        server.wait_text(user, "Got 1 style image", since=mark)
        server.send_text(user, "/go")
        assert "(1 style image) · " in result_call(server, user, mark).text
    finally:
        harness.close()
    assert DEFAULT_TOKEN not in caplog.text
    assert DEFAULT_TOKEN.split(":")[1] not in caplog.text


def test_the_token_never_reaches_the_log(server: FakeTelegram, harness: BotHarness, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    server.go_down(mode="drop")
    # The poll in flight ends with a 502, the retry a second later meets a dropped connection: both logged.
    wait_until(
        lambda: sum("polling failed" in record.getMessage() for record in caplog.records) >= 2,
        message="two failed polls in the log",
    )
    server.come_up()
    assert DEFAULT_TOKEN.split(":")[1] not in caplog.text


@pytest.fixture(autouse=True)
def _no_stray_faults(server: FakeTelegram) -> Iterator[None]:
    yield
    server.come_up()
    server.faults.clear()


def test_module_queue_is_drained(harness: BotHarness) -> None:
    """Runs last: every job the module made ended and was delivered or reported."""
    deadline = time.monotonic() + 40
    while harness.queue and harness.queue.active_jobs():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pending = list(harness.db["jobs"].rows_where("delivery = 'pending'"))
    assert pending == [], pending
