"""The Telegram bot end to end: a real `nstd run` process, tiny random-init models, the fake Bot API.

One daemon serves most tests (each test plays its own users); the restart test runs its own daemon
twice against its own fake server, so the two never compete for updates.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, write_config
from fake_telegram import DEFAULT_TOKEN, Call, FakeTelegram
from PIL import Image

from nst_daemon.manifest import read_manifest, write_manifest

pytestmark = pytest.mark.timeout(240)

SECRET = DEFAULT_TOKEN.split(":", 1)[1]
ALLOWED = list(range(5001, 5060))
CROWD = list(range(5030, 5050))  # the 20 users of the crowd test


def image_bytes(
    size: tuple[int, int] = (96, 72),
    color: tuple[int, ...] = (200, 40, 40),
    mode: str = "RGB",
    fmt: str = "JPEG",
) -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, color if mode != "L" else color[0])
    # A little structure, so the engines have edges to work on.
    for x in range(0, size[0], 8):
        image.putpixel((x, size[1] // 2), (0,) * len(image.getbands()) if mode != "L" else 0)
    image.save(buffer, fmt)
    return buffer.getvalue()


def telegram_config(path: Path, server: FakeTelegram, models: Path, **telegram: Any) -> Path:
    return write_config(
        path / "config.toml",
        {
            "paths": {"state_dir": str(path / "state"), "models_dir": str(models)},
            "telegram": {
                "token": DEFAULT_TOKEN,
                "api_base": server.base_url,
                "allowed_users": ALLOWED,
                "rate_limit_per_minute": 30,
                **telegram,
            },
            "queue": {"max_pending": 8, "per_user": 2},
            "nst": {"preset": "fast", "max_side": 64},
            "cyclegan": {"max_side": 64},
            "watch": {"enabled": False, "dir": str(path / "watch")},
            "daemon": {"grace_period_s": 2, "log_level": "info"},
        },
    )


@dataclass
class Bot:
    server: FakeTelegram
    daemon: DaemonProcess
    db_path: Path

    def jobs(self, user_id: int) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute("select * from jobs where owner = ? order by id", [str(user_id)]).fetchall()
            return [dict(row) for row in rows]
        finally:
            conn.close()

    def wait_job(self, user_id: int, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.jobs(user_id)
            if rows and predicate(rows[-1]):
                return rows[-1]
            assert time.monotonic() < deadline, f"job of {user_id} never matched: {rows}"
            time.sleep(0.1)

    def result(self, user_id: int, since: int, timeout: float = 90) -> Call:
        return self.server.wait_for(lambda c: is_result(c, user_id), timeout, since)


RESULT_CAPTION = re.compile(r".+ · .+ on .+\nSend a new image to start again\.")


def is_result(call: Call, user_id: int) -> bool:
    """A delivered result; not the status photo an NST job's live preview sends when the job runs long."""
    return (
        call.method in ("sendPhoto", "sendDocument")
        and call.chat_id == user_id
        and call.ok
        and RESULT_CAPTION.fullmatch(call.text) is not None
    )


def check_log(daemon: DaemonProcess) -> None:
    assert SECRET not in daemon.log, "the bot token leaked into the log"
    assert "Traceback" not in daemon.log, daemon.log


@pytest.fixture(scope="module")
def bot(installed_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    server = FakeTelegram().start()
    path = tmp_path_factory.mktemp("bot-e2e")
    config = telegram_config(path, server, installed_models_dir)
    daemon = DaemonProcess(config).start(timeout=120)
    try:
        yield Bot(server, daemon, path / "state" / "nstd.sqlite3")
        assert daemon.stop() == 0
        check_log(daemon)
    finally:
        daemon.kill()
        server.stop()


def loaded_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- commands ---


def test_commands(bot: Bot) -> None:
    server, user = bot.server, 5001
    assert {c["command"] for c in server.commands} == {
        "start", "help", "styles", "nst", "go", "cancel", "status", "settings", "savestyle",
    }  # fmt: skip
    mark = server.mark()
    server.send_text(user, "/start")
    welcome = server.wait_text(user, "turn photos into paintings", since=mark)
    assert len(welcome.button_data) == 7 and "style:nst" in welcome.button_data
    server.send_text(user, "/help")
    server.wait_text(user, "How to use me", since=mark)
    server.send_text(user, "/styles")
    styles = server.wait_text(user, "^Styles", since=mark)
    assert styles.text.count("\n• ") == 7
    server.send_text(user, "/status")
    server.wait_text(user, "no jobs", since=mark)
    server.send_text(user, "/cancel")
    server.wait_text(user, "Nothing to cancel", since=mark)
    server.send_text(user, "/go")
    server.wait_text(user, "nothing to stylize", since=mark)
    server.send_text(user, "/settings")
    server.wait_text(user, "Quality .*: fast", since=mark)
    query = server.press(user, "preset:balanced")
    server.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query)
    server.wait_text(user, "Quality .*: balanced", since=mark)
    server.send_text(user, "/nonsense")
    server.wait_text(user, "don't know that command", since=mark)


# --- quick paths ---


def test_photo_captioned_with_a_style(bot: Bot) -> None:
    server, user = bot.server, 5002
    mark = server.mark()
    message = server.send_photo(user, image_bytes((300, 200)), caption="Monet")
    result = bot.result(user, mark)
    assert result.method == "sendPhoto"
    assert result.text.startswith("Monet · ") and "Send a new image to start again" in result.text
    assert loaded_image(result.files["photo"]).size == (64, 43)
    first_get = server.find(lambda c: c.method == "getFile", mark)[0]
    assert first_get.params["file_id"] == message["photo"][-1]["file_id"]
    server.wait_text(user, "Monet: done in", since=mark)
    statuses = server.sent(user, "sendMessage", mark)
    assert len(statuses) == 1  # one status message, edited in place
    job = bot.wait_job(user, lambda row: row["delivery"] == "delivered")
    assert job["state"] == "done" and json.loads(job["styles"]) == ["monet"]
    assert json.loads(job["reply"])["status_message_id"] == statuses[0].message_id


def test_uncaptioned_photo_gets_style_buttons(bot: Bot) -> None:
    server, user = bot.server, 5003
    mark = server.mark()
    server.send_photo(user, image_bytes())
    question = server.wait_text(user, "Which style", since=mark)
    assert "style:vangogh" in question.button_data
    query = server.press(user, "style:vangogh")
    server.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query)
    assert bot.result(user, mark).text.startswith("Van Gogh · ")


def test_image_files_rgba_and_grayscale(bot: Bot) -> None:
    server, user = bot.server, 5004
    mark = server.mark()
    server.send_document(
        user,
        image_bytes(mode="RGBA", color=(0, 90, 200, 120), fmt="PNG"),
        file_name="a.png",
        caption="ukiyoe",
    )
    assert bot.result(user, mark).text.startswith("Ukiyo-e · ")
    mark = server.mark()
    server.send_photo(user, image_bytes(mode="L", color=(120,)), caption="summer2winter")
    result = bot.result(user, mark)
    assert result.text.startswith("Summer → Winter · ")
    assert loaded_image(result.files["photo"]).mode == "RGB"


# --- multi-style NST ---


def test_nst_with_two_style_images(bot: Bot) -> None:
    server, user = bot.server, 5005
    mark = server.mark()
    server.send_text(user, "/nst")
    server.wait_text(user, "Step 1 of 2", since=mark)
    server.send_photo(user, image_bytes((80, 60), (30, 140, 220)))
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_album(user, [image_bytes(color=(220, 30, 30)), image_bytes(color=(20, 200, 40))])
    server.wait_text(user, "Got 2 style images", since=mark)
    server.press(user, "run:nst")
    result = bot.result(user, mark, timeout=120)
    assert result.text.startswith("Multi-style NST (2 style images) · ")
    job = bot.jobs(user)[-1]
    assert job["engine"] == "nst" and len(json.loads(job["input_keys"])) == 3


def test_cancel_stops_a_running_job(bot: Bot) -> None:
    server, user = bot.server, 5006
    mark = server.mark()
    server.send_text(user, "/settings")
    server.wait_text(user, "Quality", since=mark)
    server.press(user, "preset:best")  # hundreds of steps: still running when /cancel comes
    server.wait_text(user, "Quality .*: best", since=mark)
    server.send_text(user, "/nst")
    server.send_photo(user, image_bytes((64, 64), (30, 140, 220)))
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_photo(user, image_bytes(color=(220, 30, 30)))
    server.wait_text(user, "Got 1 style image", since=mark)
    server.send_text(user, "/go")
    bot.wait_job(user, lambda row: row["state"] == "running" and (row["progress"] or 0) > 0, timeout=120)
    server.send_text(user, "/cancel")
    server.wait_text(user, r"Stopping job #\d+", since=mark)
    server.wait_text(user, r"Job #\d+ cancelled", since=mark, timeout=60)
    assert bot.jobs(user)[-1]["state"] == "cancelled"
    time.sleep(0.5)
    assert not server.find(lambda c: is_result(c, user), mark)


# --- refusals and errors ---


def test_stranger_is_refused_once_and_gets_no_job(bot: Bot) -> None:
    server, stranger = bot.server, 777_000_001
    mark = server.mark()
    server.send_text(stranger, "/start")
    reply = server.wait_text(stranger, "private bot", since=mark)
    assert f"nstd users add {stranger}" in reply.text
    server.send_photo(stranger, image_bytes(), caption="monet")
    server.send_document(stranger, image_bytes(fmt="PNG"), file_name="x.png")
    last = server.send_text(stranger, "/nst")["update_id"]
    server.wait_confirmed(last)
    time.sleep(0.5)
    assert len(server.sent(stranger, since=mark)) == 1
    assert not server.find(lambda c: c.method == "getFile", mark)
    assert bot.jobs(stranger) == []


def test_every_input_error_gets_a_clear_reply(bot: Bot) -> None:
    server, user = bot.server, 5007
    mark = server.mark()
    server.send_document(user, b"%PDF-1.4\n", file_name="a.pdf", mime_type="application/pdf")
    server.wait_text(user, r"not an image \(application/pdf\)", since=mark)
    big = server.send_document(user, b"x", file_name="big.jpg", mime_type="image/jpeg", file_size=21 << 20)
    server.wait_text(user, "too big .*20 MB.*smaller file", since=mark)
    server.send_sticker(user)
    server.wait_text(user, "send a photo or an image file", since=mark)
    server.send_text(user, "/nst")
    server.wait_text(user, "Step 1 of 2", since=mark)
    inside = server.mark()
    server.send_voice(user)  # unsupported inside a flow too
    server.wait_text(user, "send a photo or an image file", since=inside)
    server.send_text(user, "/cancel")
    server.wait_text(user, "dropped the multi-style NST", since=mark)
    server.send_photo(user, image_bytes(), caption="rembrandt")
    server.wait_text(user, 'know the style "rembrandt".*monet, cezanne', since=mark)
    server.send_document(
        user, b"\xff\xd8\xff\xe0 truncated", file_name="b.jpg", mime_type="image/jpeg", caption="monet"
    )
    server.wait_text(user, "Monet: .*(not an image|damaged|cannot be used)", since=mark)
    assert not server.find(
        lambda c: c.method == "getFile" and c.params["file_id"] == big["document"]["file_id"]
    )
    assert bot.jobs(user) == []
    server.send_photo(user, image_bytes(), caption="monet")  # and the conversation still works
    bot.result(user, mark)


def test_restart_mid_nst_model_missing_and_engine_failure(installed_models_dir: Path, tmp_path: Path) -> None:
    """Its own daemon (killed and restarted) on its own server, with one model missing and one broken."""
    models = tmp_path / "models"
    models.mkdir()
    entries = read_manifest(installed_models_dir)
    del entries["style_cezanne"]
    for entry in entries.values():
        for name in entry.files:
            (models / name).symlink_to(installed_models_dir / name)
    broken = entries["winter2summer_yosemite"]
    (models / broken.runnable).unlink()
    (models / broken.runnable).write_bytes(b"not an onnx model")
    write_manifest(models, entries)

    with FakeTelegram() as server:
        config = telegram_config(tmp_path, server, models)
        db_path = tmp_path / "state" / "nstd.sqlite3"
        first = DaemonProcess(config).start(timeout=120)
        own = Bot(server, first, db_path)
        user = 5008
        mark = server.mark()
        server.send_text(user, "/nst")
        server.wait_text(user, "Step 1 of 2", since=mark)
        update = server.send_photo(user, image_bytes((80, 60), (30, 140, 220)))["update_id"]
        server.wait_text(user, "Step 2 of 2", since=mark)
        server.wait_confirmed(update)
        first.kill()  # a crash, not a clean stop

        second = DaemonProcess(config).start(timeout=120)
        try:
            server.send_photo(user, image_bytes(color=(220, 30, 30)))
            server.wait_text(user, "Got 1 style image", since=mark)
            server.send_text(user, "/go")
            assert own.result(user, mark, timeout=120).text.startswith("Multi-style NST (1 style image)")

            other = 5009
            server.send_photo(other, image_bytes(), caption="cezanne")
            missing = server.wait_text(other, "isn't available", since=mark, timeout=60)
            assert "nstd models pull style_cezanne" in missing.text and "owner" in missing.text
            server.send_photo(other, image_bytes(), caption="winter2summer")
            failed = server.wait_text(other, "didn't work: ", since=mark, timeout=60)
            job = Bot(server, second, db_path).jobs(other)[-1]
            assert job["state"] == "failed" and job["error"].rstrip(".") in failed.text
            assert second.stop() == 0
        finally:
            second.kill()
        check_log(second)


def test_sigkill_with_photos_waiting_loses_none(installed_models_dir: Path, tmp_path: Path) -> None:
    """Photos wait at Telegram; the daemon is SIGKILLed once the first is a job; after the restart every
    photo has exactly one job and one result, and no status message stays on "preparing…"."""
    users = [5050, 5051, 5052, 5053]
    with FakeTelegram() as server:
        config = telegram_config(tmp_path, server, installed_models_dir)
        own = Bot(server, DaemonProcess(config), tmp_path / "state" / "nstd.sqlite3")
        sent = [
            server.send_photo(user, image_bytes(color=(user % 255, 60 * n, 90)), caption="monet")["update_id"]
            for user in users
            for n in range(2)
        ]
        own.daemon.start(timeout=120)
        try:
            deadline = time.monotonic() + 60
            while not any("job 1 queued" in line for line in own.daemon.lines):
                assert time.monotonic() < deadline, own.daemon.log
                time.sleep(0.01)
            # Every photo is stored and Telegram no longer has it (the next poll confirms a stored batch;
            # it usually comes before job 1, but that is scheduling order, not a promise).
            server.wait_confirmed(max(sent))
            own.daemon.kill()
            first_log = own.daemon.log
            server.wait_handled()  # a "got it" that reached the server before the kill counts as sent
            sent_before_kill = {
                (call.chat_id, call.message_id) for call in list(server.calls) if call.method == "sendMessage"
            }

            own.daemon.start(timeout=120)
            for user in users:
                deadline = time.monotonic() + 120
                while len(server.sent(user, "sendPhoto")) < 2:
                    assert time.monotonic() < deadline, (user, own.jobs(user), own.daemon.log)
                    time.sleep(0.2)
            time.sleep(2)  # a duplicate would show by now
            for user in users:
                assert len(server.sent(user, "sendPhoto")) == 2, user
                jobs = own.jobs(user)
                assert [(job["state"], job["delivery"]) for job in jobs] == [("done", "delivered")] * 2
                assert len({json.loads(job["reply"])["intake"] for job in jobs}) == 2
                final = {
                    call.message_id: call.text
                    for call in server.find(lambda c, user=user: c.chat_id == user and c.ok)
                }
                stuck = {message_id for message_id, text in final.items() if "preparing" in text}
                # Every status message the daemon recorded was finished. The one window left, like the
                # delivery's: a SIGKILL between Telegram's answer to "got it" and its record, so the restart
                # cannot know that message and sends a new one (docs/reliability.md).
                recorded = {json.loads(job["reply"])["status_message_id"] for job in jobs}
                assert not stuck & recorded, final
                assert all((user, message_id) in sent_before_kill for message_id in stuck), final
                assert len(stuck) <= 1, final
            assert own.daemon.stop() == 0
        finally:
            own.daemon.kill()
        assert "Traceback" not in own.daemon.log
        # A SIGKILL can land while the engine child is still being spawned: Python's spawn bootstrap then
        # reports the dead pipe before any nstd code runs in the child. Anything else is a defect.
        assert all("multiprocessing/spawn.py" in block for block in first_log.split("Traceback")[1:])


# --- Telegram trouble ---


def test_flood_control_delivers_exactly_once(bot: Bot) -> None:
    server, user = bot.server, 5010
    server.fail("sendPhoto", times=3, status=429, retry_after=1, chat_id=user)
    mark = server.mark()
    server.send_photo(user, image_bytes(), caption="cezanne")
    bot.result(user, mark)
    bot.wait_job(user, lambda row: row["delivery"] == "delivered")
    time.sleep(1)
    sends = server.find(lambda c: c.method == "sendPhoto" and c.chat_id == user, mark)
    assert [call.status for call in sends] == [429, 429, 429, 200]


def test_result_made_during_an_outage_arrives_once(bot: Bot) -> None:
    server, user = bot.server, 5011
    mark = server.mark()
    server.send_photo(user, image_bytes(), caption="winter2summer")
    # Down once the photo is fetched and the status message is out: the job is then being made (its
    # model loads first: no other test here uses winter2summer), and its result meets the outage.
    server.wait_for(lambda c: c.method == "download", since=mark)
    server.wait_text(user, "got it", since=mark)
    server.go_down()
    try:
        bot.wait_job(user, lambda row: row["state"] == "done" and row["delivery_attempts"] >= 1, timeout=60)
    finally:
        server.come_up()
    bot.result(user, mark, timeout=90)
    bot.wait_job(user, lambda row: row["delivery"] == "delivered")
    time.sleep(1)
    assert len(server.sent(user, "sendPhoto", mark)) == 1


def test_twenty_users_at_once(bot: Bot) -> None:
    server = bot.server
    mark = server.mark()
    for user in CROWD:
        server.send_photo(user, image_bytes(color=(user % 255, 80, 160)), caption="monet")

    def outcome(user: int) -> list[str]:
        calls = server.find(lambda c: c.chat_id == user and c.ok, mark)
        results = [c for c in calls if c.method == "sendPhoto"]
        busy = [c for c in calls if c.method == "editMessageText" and c.text.startswith("Monet: Busy")]
        return ["result"] * len(results) + ["busy"] * len(busy)

    deadline = time.monotonic() + 120
    while not all(outcome(user) for user in CROWD):
        assert time.monotonic() < deadline, {user: outcome(user) for user in CROWD}
        time.sleep(0.2)
    time.sleep(1)
    outcomes = {user: outcome(user) for user in CROWD}
    assert all(len(kinds) == 1 for kinds in outcomes.values()), outcomes
    served = [user for user, kinds in outcomes.items() if kinds == ["result"]]
    for user in CROWD:
        jobs = bot.jobs(user)
        if user in served:
            assert [(job["state"], job["delivery"]) for job in jobs] == [("done", "delivered")]
        else:
            assert jobs == []
    assert len(served) >= 8  # at least a full queue's worth was accepted
