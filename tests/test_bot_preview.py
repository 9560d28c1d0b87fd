"""The live preview of a painted NST job: engine snapshots -> engine process -> queue -> the bot's status
photo, against the fake Bot API with its flood limits on.

The bot tests run the real JobQueue and BotService with a fake runner that sends a preview with every
progress update (far faster than the bot may show them); the engine tests run the real NST engine with
the tiny test VGG.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import wait_until
from engine_stubs import ScriptedRunner, make_job
from fake_telegram import Call, FakeTelegram
from PIL import Image
from test_bot_flows import BotHarness, FakeRunner, jpeg

from nst_daemon.bot import keyboards
from nst_daemon.config import Settings
from nst_daemon.engine_process import ProcessRunner
from nst_daemon.engines import nst_plugin
from nst_daemon.engines.nst import NSTEngine, NSTOptions, NSTProgress
from nst_daemon.engines.preview import PREVIEW_SIDE, preview_jpeg
from nst_daemon.errors import Cancelled
from nst_daemon.jobs import Job, RunResult
from nst_daemon.runner import EngineRunner

INTERVAL_S = 1.5  # the editor's preview interval in these tests (5 s in the bot), to keep them short
RESULT_COLOR = (10, 200, 10)  # FakeRunner's result


class PreviewRunner(FakeRunner):
    """Like FakeRunner, but an NST job with the preview on sends a frame (a small JPEG) with every
    progress update, 20 a second: the bot must fold them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames_sent: dict[int, int] = {}

    def run(
        self,
        job: Job,
        content: bytes,
        styles: list[bytes],
        progress: Callable[..., None],
        cancel: threading.Event,
    ) -> RunResult:
        if job.engine != "nst" or not job.params.get("preview"):
            return super().run(job, content, styles, progress, cancel)
        self.seen.append(job)
        seconds = self.slow.get(job.owner, self.seconds)
        steps = max(1, int(seconds / 0.05))
        for step in range(steps):
            if cancel.is_set():
                raise Cancelled()
            time.sleep(seconds / steps)
            shade = int(255 * step / steps)
            progress((step + 1) / steps, preview_jpeg(Image.new("RGB", (96, 96), (shade, 0, 255 - shade))))
            self.frames_sent[job.id] = self.frames_sent.get(job.id, 0) + 1
        return RunResult(image=Image.new("RGB", (100, 100), RESULT_COLOR), report={"device": "cpu"})


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:  # flood limits on
        yield fake


@pytest.fixture(scope="module")
def harness(server: FakeTelegram, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotHarness]:
    bot = BotHarness(server, tmp_path_factory.mktemp("bot"))
    bot.runner = PreviewRunner()
    bot.start()
    assert bot.bot is not None
    bot.bot.editor.preview_interval_s = INTERVAL_S
    bot.bot.editor.interval_s = 1.0  # text edits may come faster, so the preview's interval is what binds
    yield bot
    bot.close()


_next_user = iter(range(7001, 100000))


@pytest.fixture
def user(harness: BotHarness) -> int:
    user_id = next(_next_user)
    harness.allow(user_id)
    return user_id


def run_nst_job(server: FakeTelegram, harness: BotHarness, user: int, seconds: float) -> tuple[int, float]:
    """Start a painted NST job for `user` taking `seconds`; returns (mark before it, time it started)."""
    harness.runner.slow[str(user)] = seconds
    mark = server.mark()
    server.send_text(user, "/nst")
    server.wait_text(user, "Step 1 of 2", since=mark)
    server.send_photo(user, jpeg(100, 100))
    server.wait_text(user, "Step 2 of 2", since=mark)
    server.send_photo(user, jpeg(color=(1, 2, 3)))
    server.wait_text(user, "Got 1 style image", since=mark)
    started = time.monotonic()
    server.press(user, "run:nst")
    return mark, started


def result_call(server: FakeTelegram, user: int, since: int, timeout: float = 30) -> Call:
    """The delivered result: a photo captioned with the result caption (not the status photo)."""
    return server.wait_for(
        lambda c: c.method == "sendPhoto" and c.chat_id == user and c.ok and "Send a new image" in c.text,
        timeout,
        since,
    )


def status_frames(server: FakeTelegram, user: int, since: int) -> list[Call]:
    """The pictures shown in the user's status message: the photo status, then its media edits."""
    return server.find(
        lambda c: (
            c.chat_id == user
            and c.ok
            and (c.method == "editMessageMedia" or (c.method == "sendPhoto" and "stylizing" in c.text))
        ),
        since,
    )


def status_message(server: FakeTelegram, user: int, message_id: int) -> dict[str, Any]:
    with server._lock:
        return dict(server.messages[(user, message_id)])


def photo_color(server: FakeTelegram, message: dict[str, Any]) -> tuple[int, int, int]:
    stored = server.files[message["photo"][-1]["file_id"]]
    with Image.open(io.BytesIO(stored.data)) as image:
        return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def recorder(calls: list[tuple[Any, ...]]) -> Callable[..., None]:
    """A progress callback that keeps its arguments: (fraction,) or (fraction, preview)."""
    return lambda *args: calls.append(args)


def close_to(color: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(color, expected, strict=True))


# --- the bot --------------------------------------------------------------------------------------------


def test_preview_edits_are_bounded_in_rate(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark, _ = run_nst_job(server, harness, user, seconds=6.0)
    result_call(server, user, mark)
    job_id = harness.jobs_of(user)[-1]["id"]
    frames = status_frames(server, user, mark)
    assert frames[0].method == "sendPhoto", "the first frame turns the status into a photo"
    assert len(frames) >= 2
    # Never two pictures within the interval (arrival times; load only makes the gaps longer) ...
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(frames)]
    assert min(gaps) >= INTERVAL_S - 0.3, gaps
    # ... so the ~120 frames the engine sent folded into a few, and Telegram never had to refuse one.
    assert len(frames) < harness.runner.frames_sent[job_id] / 4
    assert not [flood for flood in server.flood_refusals() if flood[1] == user]


@pytest.mark.parametrize(
    "refusal",
    [
        {"status": 400, "description": "Bad Request: message is not modified"},
        {"status": 429, "retry_after": 1},
        {"status": 502},
    ],
    ids=["not-modified", "flood", "outage"],
)
def test_a_refused_preview_edit_never_fails_the_job_and_the_end_still_shows(
    server: FakeTelegram, harness: BotHarness, user: int, refusal: dict[str, Any]
) -> None:
    server.fail("editMessageMedia", times=1000, chat_id=user, **refusal)
    mark, _ = run_nst_job(server, harness, user, seconds=5.0)
    result = result_call(server, user, mark)
    assert close_to(photo_color(server, result.response["result"]), RESULT_COLOR)
    job = wait_until(lambda: [j for j in harness.jobs_of(user) if j["delivery"] == "delivered"], 20)[-1]
    assert job["state"] == "done"
    # The photo status stayed, and its final caption says done all the same ...
    photo_id = status_frames(server, user, mark)[0].message_id
    assert photo_id is not None
    server.wait_for(
        lambda c: c.chat_id == user and c.message_id == photo_id and c.ok and ": done in" in c.text,
        since=mark,
    )
    # ... though every new picture was refused.
    refused = server.find(lambda c: c.method == "editMessageMedia" and c.chat_id == user, mark)
    assert refused and not any(call.ok for call in refused)
    with server._lock:
        server.faults = [fault for fault in server.faults if fault.chat_id != user]


def test_a_hanging_preview_edit_never_stalls_the_job(
    server: FakeTelegram, harness: BotHarness, user: int
) -> None:
    server.delay("editMessageMedia", 20.0)  # the first media edit (this test's) hangs for 20 s
    mark, started = run_nst_job(server, harness, user, seconds=5.0)
    result_call(server, user, mark, timeout=15)
    # Delivered well before the hung edit returns: the job and its delivery never waited on it.
    assert time.monotonic() - started < 15
    assert harness.jobs_of(user)[-1]["state"] == "done"


def test_the_preview_can_be_turned_off(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark = server.mark()
    server.send_text(user, "/settings")
    server.wait_text(user, "Live preview: on", since=mark)
    server.press(user, keyboards.SetPreview(on=False).pack())
    server.wait_for(lambda c: c.chat_id == user and "Live preview: off" in c.text and c.ok, since=mark)
    job_mark, _ = run_nst_job(server, harness, user, seconds=3.0)
    result_call(server, user, job_mark)
    job = harness.jobs_of(user)[-1]
    assert '"preview": false' in job["params"]
    assert not status_frames(server, user, job_mark)
    assert not server.find(lambda c: c.chat_id == user and c.method == "editMessageMedia", job_mark)
    # The status stayed a text message and ends saying done, as without the feature.
    server.wait_for(
        lambda c: c.chat_id == user and c.method == "editMessageText" and ": done in" in c.text,
        since=job_mark,
    )
    # Remembered: a second /settings shows it off.
    again = server.mark()
    server.send_text(user, "/settings")
    server.wait_text(user, "Live preview: off", since=again)


def test_the_final_message_shows_the_result(server: FakeTelegram, harness: BotHarness, user: int) -> None:
    mark, _ = run_nst_job(server, harness, user, seconds=4.0)
    result_call(server, user, mark)
    frames = status_frames(server, user, mark)
    photo_id = frames[0].message_id
    assert photo_id is not None
    server.wait_for(
        lambda c: c.chat_id == user and c.message_id == photo_id and c.ok and ": done in" in c.text,
        since=mark,
    )
    message = status_message(server, user, photo_id)
    # The status photo ends as the finished picture, small, captioned done, with no cancel button left.
    assert ": done in" in message["caption"] and not message.get("reply_markup")
    assert close_to(photo_color(server, message), RESULT_COLOR)
    assert max(message["photo"][-1]["width"], message["photo"][-1]["height"]) <= PREVIEW_SIDE
    # The text status it replaced is gone: one status per job.
    received = server.find(
        lambda c: c.chat_id == user and c.method == "sendMessage" and "got it" in c.text, mark
    )
    assert received and (user, received[-1].message_id) not in server.messages


# --- the engine and the process boundary --------------------------------------------------------------


def test_preview_jpeg_is_small_and_keeps_the_aspect() -> None:
    tensor = torch.rand(1, 3, 600, 900)
    with Image.open(io.BytesIO(preview_jpeg(tensor))) as image:
        assert image.format == "JPEG" and image.size == (PREVIEW_SIDE, 213)
    with Image.open(io.BytesIO(preview_jpeg(Image.new("RGB", (90, 60))))) as image:
        assert image.size == (90, 60)  # never enlarged


def test_the_engine_sends_previews_only_when_asked(installed_models_dir: Path) -> None:
    engine = NSTEngine(installed_models_dir / "vgg19-dcbb9e9d.pth", device="cpu")
    content, style = Image.new("RGB", (48, 36), (120, 80, 40)), Image.new("RGB", (40, 40), (10, 90, 200))
    options = NSTOptions(max_side=40, scales=(1.0,), max_steps=4, tolerance=0.0)
    updates: list[NSTProgress] = []
    engine.stylize(content, [style], options=options, progress=updates.append)
    assert updates and all(update.preview is None for update in updates)
    updates.clear()
    engine.stylize(
        content,
        [style],
        options=NSTOptions(**{**vars(options), "preview_every_s": 0.0}),
        progress=updates.append,
    )
    previews = [update.preview for update in updates if update.preview is not None]
    assert len(previews) == 4  # one per step at interval 0
    with Image.open(io.BytesIO(previews[-1])) as image:
        assert image.format == "JPEG" and image.size == (40, 30)


def test_the_runner_asks_for_previews_for_a_preview_job_only(
    installed_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nst_plugin, "PREVIEW_EVERY_S", 0.0)
    settings = Settings.model_validate(
        {
            "paths": {"state_dir": str(tmp_path / "state"), "models_dir": str(installed_models_dir)},
            "nst": {"preset": "fast", "max_side": 64},
        }
    )
    runner = EngineRunner(settings)
    content = jpeg(48, 36)
    for wanted in (True, False):
        calls: list[tuple[Any, ...]] = []
        job = make_job("nst", [], preview=wanted)
        runner.run(job, content, [jpeg(color=(1, 2, 3))], recorder(calls), threading.Event())
        with_frames = [args for args in calls if len(args) == 2]
        assert bool(with_frames) == wanted
        assert all(isinstance(args[1], bytes) and args[1][:2] == b"\xff\xd8" for args in with_frames)


def test_a_preview_crosses_the_engine_process_as_a_small_jpeg(tmp_path: Path) -> None:
    settings = Settings.model_validate({"paths": {"state_dir": str(tmp_path / "state")}})
    runner = ProcessRunner(settings, make_runner=ScriptedRunner)
    try:
        calls: list[tuple[Any, ...]] = []
        runner.run(make_job(preview=True), b"", [], lambda *args: calls.append(args), threading.Event())
    finally:
        runner.close()
    frames = [args[1] for args in calls if len(args) == 2]
    assert len(frames) == 1 and len(frames[0]) < 20_000
    with Image.open(io.BytesIO(frames[0])) as image:
        assert image.size == (PREVIEW_SIDE, 240)
    assert [args for args in calls if len(args) == 1], "plain progress still comes as progress(fraction)"
