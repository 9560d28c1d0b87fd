"""The queue's side of a runner whose engines run elsewhere (cluster/runner.py), without Ray: jobs wait
queued while it is not ready, an unreachable cluster costs no attempt, a lost replica costs one of the
runner's `max_attempts`, and a runner that reads the store itself gets no image bytes and stores its own
result."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from job_helpers import cyclegan_request, make_queue, run_until_final

from nst_daemon.cluster.runner import ReplicaLost
from nst_daemon.errors import ClusterUnavailable
from nst_daemon.jobs import Job, RunResult
from nst_daemon.store import get_bytes, put_bytes


class RemoteRunner:
    """Stores its result at the fixed key itself, as a replica does; `faults` are raised first, in order."""

    reads_store = True

    def __init__(self, store: Any = None, faults: list[Exception] | None = None, max_attempts: int = 3):
        self.store = store
        self.faults = list(faults or [])
        self.max_attempts = max_attempts
        self.is_ready = True
        self.calls: list[tuple[int, bytes, list[bytes]]] = []

    def ready(self) -> bool:
        return self.is_ready

    def run(self, job: Job, content: bytes, styles: list[bytes], progress: Any, cancel: threading.Event):
        self.calls.append((job.id, content, styles))
        if self.faults:
            raise self.faults.pop(0)
        source = get_bytes(self.store, "nstd", job.input_keys[0])
        key = f"{job.prefix}result.jpg"
        put_bytes(self.store, "nstd", key, source, "image/jpeg")
        return RunResult(None, {"device": "remote"}, jpeg=source, stored_key=key)

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


def test_jobs_wait_queued_while_the_runner_is_not_ready(tmp_path: Path) -> None:
    runner = RemoteRunner()
    runner.is_ready = False

    async def scenario() -> None:
        queue = make_queue(tmp_path, runner)
        runner.store = queue.store
        job = await queue.submit(cyclegan_request())
        worker = asyncio.create_task(queue.run_worker())
        await asyncio.sleep(0.5)
        assert queue.get(job.id).state == "queued" and runner.calls == []
        await queue.shutdown(1)
        worker.cancel()
        runner.is_ready = True
        done = await run_until_final(make_queue(tmp_path, runner), job.id)
        assert (done.state, done.attempts) == ("done", 0)

    asyncio.run(scenario())


def test_a_remote_runner_reads_and_stores_by_key(tmp_path: Path) -> None:
    runner = RemoteRunner()

    async def scenario() -> None:
        queue = make_queue(tmp_path, runner)
        runner.store = queue.store
        job = await queue.submit(cyclegan_request())
        done = await run_until_final(queue, job.id)
        assert done.state == "done" and done.output_key == f"jobs/{job.id}/result.jpg"
        assert runner.calls == [(job.id, b"", [])]  # no image bytes through the runner's arguments
        assert get_bytes(queue.store, "nstd", done.output_key) == get_bytes(
            queue.store, "nstd", job.input_keys[0]
        )

    asyncio.run(scenario())


def test_an_unreachable_cluster_costs_no_attempt_and_a_lost_replica_one(tmp_path: Path) -> None:
    faults: list[Exception] = [
        ClusterUnavailable("the Ray cluster at h:1 does not answer"),
        ReplicaLost("lost"),
    ]
    runner = RemoteRunner(faults=faults)

    async def scenario() -> None:
        queue = make_queue(tmp_path, runner)
        runner.store = queue.store
        job = await queue.submit(cyclegan_request())
        done = await run_until_final(queue, job.id)
        assert (done.state, done.attempts) == ("done", 1)
        assert len(runner.calls) == 3

    asyncio.run(scenario())


def test_the_runner_sets_how_many_attempts_a_job_gets(tmp_path: Path) -> None:
    runner = RemoteRunner(faults=[ReplicaLost("the Ray replica was lost mid-job")] * 5, max_attempts=2)

    async def scenario() -> None:
        queue = make_queue(tmp_path, runner)
        runner.store = queue.store
        job = await queue.submit(cyclegan_request())
        done = await run_until_final(queue, job.id)
        assert (done.state, done.attempts) == ("failed", 2)
        assert "the Ray replica was lost mid-job (the engine crashed 2 times on this job)" in (
            done.error or ""
        )
        assert len(runner.calls) == 2

    asyncio.run(scenario())
