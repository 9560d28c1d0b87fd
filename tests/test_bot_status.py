"""Status messages and the Bot API pace, without a server: edits per message stay bounded whatever the
queue does, the time left is shown, results come before edits, and the fake Bot API enforces the limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from fake_telegram import DEFAULT_TOKEN, FakeTelegram

from nst_daemon.bot.api_limits import ApiLimiter
from nst_daemon.bot.status_messages import JobProgress, status_text
from nst_daemon.jobs import Job


def make_job(job_id: int, state: str = "queued", **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": job_id,
        "source": "telegram",
        "owner": str(job_id),
        "engine": "cyclegan",
        "styles": ["monet"],
        "params": {},
        "state": state,
        "progress": 0.0,
        "attempts": 0,
        "error": None,
        "input_keys": [],
        "output_key": None,
        "delivery": "pending",
        "delivery_attempts": 0,
        "reply": {"chat_id": job_id, "status_message_id": 1},
        "created_at": 0.0,
        "started_at": None,
        "finished_at": None,
    }
    values.update(fields)
    return Job(**values)


class Queue:
    """The two reads JobProgress makes, over a list of active jobs."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def active_jobs(self) -> list[Job]:
        return list(self.jobs)

    def position(self, job_id: int) -> tuple[int, int] | None:
        ids = [job.id for job in self.jobs]
        return (ids.index(job_id) + 1, len(ids)) if job_id in ids else None


class Editor:
    """Records what JobProgress asks to show, per message."""

    def __init__(self) -> None:
        self.updates: Counter[int] = Counter()
        self.texts: dict[int, str] = {}

    def update(
        self, chat_id: int, message_id: int, text: str, markup: Any = None, *, final: bool = False
    ) -> None:
        self.updates[chat_id] += 1
        self.texts[chat_id] = text


def test_queue_positions_are_rewritten_a_logarithmic_number_of_times() -> None:
    """A queue of 64 drains one job at a time: the last message is not rewritten 63 times."""
    jobs = [make_job(n) for n in range(1, 65)]
    queue, editor = Queue(jobs), Editor()
    progress = JobProgress(queue, editor)  # type: ignore[arg-type]
    for job in jobs:
        progress(job)  # each joins the queue
    while queue.jobs:
        head = queue.jobs.pop(0)
        progress(dataclasses.replace(head, state="done"))
    assert max(editor.updates.values()) <= 8, editor.updates.most_common(3)
    # Still right where it matters: the last job was shown as next in line before it left.
    assert "position 1 of 1" in editor.texts[64]


def test_a_long_job_gets_a_bounded_number_of_progress_edits() -> None:
    job = make_job(1, state="running", started_at=time.time())
    queue, editor = Queue([job]), Editor()
    progress = JobProgress(queue, editor)  # type: ignore[arg-type]
    for step in range(1000):  # a progress report every 0.1 %
        progress(dataclasses.replace(job, progress=step / 1000))
    assert editor.updates[1] <= 21


def test_the_running_status_shows_the_time_left() -> None:
    now = time.time()
    halfway = make_job(1, state="running", progress=0.5, started_at=now - 40)
    assert status_text(halfway, None) == "Monet: stylizing… 50%, about 40 s left"
    early = make_job(1, state="running", progress=0.1, started_at=now - 60)
    assert status_text(early, None) == "Monet: stylizing… 10%, about 9 min left"
    # Too early to tell: no guess.
    assert status_text(make_job(1, state="running", progress=0.01, started_at=now - 5), None).endswith("1%")


def test_edits_never_take_a_chats_last_slot_and_wait_for_results() -> None:
    async def scenario() -> None:
        limiter = ApiLimiter(per_chat_rate=1.0, per_chat_burst=3)
        await limiter.acquire(9)
        await limiter.acquire(9)
        assert limiter.delay(9) == 0  # one slot left: a result may take it now
        assert limiter.delay(9, low=True) > 0  # an edit may not
        order: list[str] = []

        async def call(name: str, low: bool) -> None:
            await limiter.acquire(9, low=low)
            order.append(name)

        await asyncio.gather(call("edit", True), call("result", False), call("result 2", False))
        assert order.index("result") < order.index("edit")
        assert order.index("result 2") < order.index("edit")

    asyncio.run(scenario())


def test_the_fake_bot_api_enforces_the_flood_limits_by_default() -> None:
    with FakeTelegram() as server:
        statuses = []
        for n in range(12):  # 4 pass at once; the rest come faster than 1 a second unless the box stalls
            request = urllib.request.Request(
                f"{server.base_url}/bot{DEFAULT_TOKEN}/sendMessage",
                data=json.dumps({"chat_id": 42, "text": f"hello {n}"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                statuses.append(exc.code)
                assert body["parameters"]["retry_after"] >= 1
        assert statuses[:4] == [200] * 4  # a short burst passes
        assert 429 in statuses[4:]
        assert server.flood_refusals()[0] == ("sendMessage", 42)


def test_a_late_update_never_turns_a_final_status_back() -> None:
    """Progress listeners run as tasks, so a "stylizing" update can land after the delivery's final "done";
    the message must keep showing how the job ended."""
    from nst_daemon.bot.status_messages import StatusEditor

    class RecordingBot:
        def __init__(self) -> None:
            self.edits: list[str] = []

        async def edit_message_text(self, *, text: str, **_: Any) -> None:
            self.edits.append(text)

    async def scenario() -> list[str]:
        editor = StatusEditor(interval_s=0.0, first_edit_after_s=0.0)
        bot = RecordingBot()
        editor.bot = bot  # type: ignore[assignment]
        editor.update(7, 1, "Monet: done in 1 s on cpu.", final=True)
        await editor.drain(5)
        editor.update(7, 1, "Monet: stylizing… 90%")  # a listener's late update
        await asyncio.sleep(0.05)
        await editor.drain(5)
        return bot.edits

    assert asyncio.run(scenario()) == ["Monet: done in 1 s on cpu."]
