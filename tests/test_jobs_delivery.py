"""Exactly-once delivery and the blame for crashes (issue 19)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from job_helpers import FakeRunner, cyclegan_request, make_queue, run_until_final

from nst_daemon import jobs
from nst_daemon.engine_process import EngineProcessDied
from nst_daemon.jobs import Job, JobQueue, delivery


async def finished_undelivered(queue: JobQueue, count: int) -> list[int]:
    """Jobs done, whose first delivery failed long enough ago for a redelivery pass to pick them up."""
    ids = []
    for n in range(count):
        job = await queue.submit(cyclegan_request(f"u{n}"))
        queue.db["jobs"].update(
            job.id,
            {
                "state": "done",
                "delivery": "pending",
                "delivery_attempts": 1,
                "updated_at": time.time() - 3600,
            },
        )
        ids.append(job.id)
    return ids


def test_a_redelivery_pass_never_resends_what_was_delivered_meanwhile(tmp_path: Path) -> None:
    """A pass reads its rows once, then waits on each delivery (flood control can hold one for minutes).
    A result delivered meanwhile by another path was sent again from the stale row: 21-33 duplicates per
    150 photos. The claim re-checks the row in the database just before sending."""

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner(), queue={"max_pending": 10, "per_user": 10})
        first, second = await finished_undelivered(queue, 2)
        sent: list[int] = []
        first_held = asyncio.Event()
        release_first = asyncio.Event()

        async def deliver(job: Job, result: bytes | None) -> None:
            sent.append(job.id)
            if job.id == first and not release_first.is_set():
                first_held.set()
                await release_first.wait()  # as a delivery waiting out a 429

        queue.set_deliverer("cli", deliver)
        passing = asyncio.create_task(queue.redeliver_pending())  # has read both rows
        await first_held.wait()
        await queue.delivery.deliver(queue.get(second))  # the other path delivers the second job meanwhile
        assert queue.get(second).delivery == "delivered"
        release_first.set()
        await passing
        assert sorted(sent) == [first, second]  # each once
        assert [queue.get(job_id).delivery_attempts for job_id in (first, second)] == [2, 2]
        await queue.shutdown(1)

    asyncio.run(scenario())


def test_two_deliveries_from_the_same_stale_row_send_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        (job_id,) = await finished_undelivered(queue, 1)
        stale = queue.get(job_id)
        sent: list[str] = []

        async def deliver(job: Job, result: bytes | None) -> None:
            sent.append(job.delivery)
            await asyncio.sleep(0.05)

        queue.set_deliverer("cli", deliver)
        await queue.delivery.deliver(stale)
        await queue.delivery.deliver(stale)  # e.g. a second pass working from the same old read
        assert sent == ["sending"] and queue.get(job_id).delivery == "delivered"
        await queue.shutdown(1)

    asyncio.run(scenario())


def test_a_delivery_left_mid_send_by_a_crash_is_sent_again(tmp_path: Path) -> None:
    """The one window: the source answered, the daemon died before recording it. The row says "sending";
    losing the result is worse than a possible duplicate, so the next start sends it again."""

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        (job_id,) = await finished_undelivered(queue, 1)
        queue.db["jobs"].update(job_id, {"delivery": "sending"})
        sent: list[int] = []

        async def deliver(job: Job, result: bytes | None) -> None:
            sent.append(job.id)

        queue.set_deliverer("cli", deliver)
        assert await queue.redeliver_pending() == 0  # not while another send may be under way
        await queue.recover()
        assert queue.get(job_id).delivery == "pending"
        await queue.redeliver_pending()
        assert sent == [job_id] and queue.get(job_id).delivery == "delivered"
        await queue.shutdown(1)

    asyncio.run(scenario())


def test_a_delivery_cancelled_by_shutdown_is_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "DELIVERY_GRACE_S", 0.1)

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        entered = asyncio.Event()

        async def hang(job: Job, result: bytes | None) -> None:
            entered.set()
            await asyncio.sleep(60)

        queue.set_deliverer("cli", hang)
        job = await queue.submit(cyclegan_request())
        worker = asyncio.create_task(queue.run_worker())
        await entered.wait()
        assert queue.get(job.id).delivery == "sending"
        await queue.shutdown(1)
        worker.cancel()
        assert queue.get(job.id).delivery == "pending"

    asyncio.run(scenario())


class CrashingRunner(FakeRunner):
    """The engine process dies under the job, `crashes` times, as EngineProcessDied reports it."""

    def __init__(self, crashes: int, oom: bool = False) -> None:
        super().__init__()
        self.crashes = crashes
        self.oom = oom
        self.sizes: list[Any] = []

    def run(self, job: Job, *args: Any) -> Any:
        self.sizes.append(job.params.get("max_side"))
        if len(self.sizes) <= self.crashes:
            died = EngineProcessDied(
                "the engine process was killed by SIGKILL; the next job starts a new one"
            )
            died.oom_suspected = self.oom
            raise died
        return super().run(job, *args)


def test_an_engine_crash_is_retried_until_the_attempts_run_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = CrashingRunner(crashes=jobs.MAX_ATTEMPTS - 1)
        queue = make_queue(tmp_path, runner)
        job = await queue.submit(cyclegan_request())
        done = await run_until_final(queue, job.id)
        assert done.state == "done" and done.attempts == jobs.MAX_ATTEMPTS - 1
        assert len(runner.sizes) == jobs.MAX_ATTEMPTS and runner.ran == [job.id]

        runner = CrashingRunner(crashes=99)
        queue = make_queue(tmp_path / "b", runner)
        job = await queue.submit(cyclegan_request())
        failed = await run_until_final(queue, job.id)
        assert failed.state == "failed" and failed.attempts == jobs.MAX_ATTEMPTS
        assert failed.error.endswith(f"(the engine crashed {jobs.MAX_ATTEMPTS} times on this job)")
        assert len(runner.sizes) == jobs.MAX_ATTEMPTS and runner.ran == []

    asyncio.run(scenario())


def test_an_out_of_memory_kill_gets_one_retry_at_three_quarters_of_the_size(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = CrashingRunner(crashes=1, oom=True)
        queue = make_queue(tmp_path, runner, cyclegan={"max_side": 1024})
        job = await queue.submit(cyclegan_request())
        done = await run_until_final(queue, job.id)
        assert done.state == "done" and runner.sizes == [None, 768]

        runner = CrashingRunner(crashes=99, oom=True)
        queue = make_queue(tmp_path / "b", runner, cyclegan={"max_side": 1024})
        job = await queue.submit(cyclegan_request())
        failed = await run_until_final(queue, job.id)
        assert runner.sizes == [None, 768]  # one retry, not three
        assert failed.state == "failed" and failed.error.endswith("it ran out of memory even at 768 px")

    asyncio.run(scenario())
