"""Intake that survives the server's bad moments: a full disk, another process's write lock, a slow
store, and photos whose pixels would not fit the daemon's memory (issue 19)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import image_corpus
import pytest
from job_helpers import FakeRunner, cyclegan_request, jpeg, make_queue, object_keys, run_until_final

from nst_daemon import db as database
from nst_daemon import imaging
from nst_daemon.backoff import Backoff
from nst_daemon.errors import DISK_FULL_MESSAGE, Cancelled, DiskFull
from nst_daemon.jobs import Job
from nst_daemon.runner import decode_inputs
from nst_daemon.store import objfile


class FillableDisk:
    """Stands in for `os` inside objfile.py: while `full`, writing an object's file fails as a full disk
    does (ENOSPC at fsync, after the bytes went to the page cache)."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def fsync(self, fd: int) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FillableDisk:
    fake = FillableDisk()
    monkeypatch.setattr(objfile, "os", fake)
    return fake


def test_a_full_disk_refuses_intake_with_one_line_and_leaves_nothing(
    tmp_path: Path, disk: FillableDisk
) -> None:
    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        disk.full = True
        with pytest.raises(DiskFull) as refused:
            await queue.submit(cyclegan_request())
        assert str(refused.value) == refused.value.message == DISK_FULL_MESSAGE
        assert DISK_FULL_MESSAGE == "the server is out of disk space; try again later"
        assert queue.db["jobs"].count == 0 and object_keys(queue, "jobs/") == []
        assert os.listdir(queue.store.root / queue.bucket) == []  # no temp file left either
        disk.full = False  # space is back: the next photo goes through, nothing to restart
        job = await queue.submit(cyclegan_request())
        assert queue.get(job.id).state == "queued"

    asyncio.run(scenario())


def test_the_worker_waits_for_space_and_then_delivers(
    tmp_path: Path, disk: FillableDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nst_daemon.jobs.worker.DISK_FULL", Backoff((0.05,)))

    async def scenario() -> None:
        runner = FakeRunner()
        queue = make_queue(tmp_path, runner)
        delivered: list[bytes | None] = []

        async def deliver(job: Job, result: bytes | None) -> None:
            delivered.append(result)

        queue.set_deliverer("cli", deliver)
        job = await queue.submit(cyclegan_request())
        disk.full = True
        worker = asyncio.create_task(queue.run_worker())
        while disk.refused < 3 and not worker.done():  # three refused writes of the result: it waits
            await asyncio.sleep(0.01)
        assert not worker.done() and queue.disk_full
        assert queue.get(job.id).state == "running" and delivered == []
        disk.full = False
        done = await run_until_final(queue, job.id)
        assert done.state == "done" and done.delivery == "delivered" and not queue.disk_full
        assert len(delivered) == 1 and imaging.is_jpeg(delivered[0])
        assert runner.ran == [job.id]  # waited, not run again
        worker.cancel()

    asyncio.run(scenario())


def test_a_lock_held_past_the_busy_timeout_delays_intake_without_losing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process held the write lock for 12 s, past the 10 s busy timeout, and a photo was lost to
    "database is locked". Scaled down: a 0.3 s busy timeout and a lock held at least three times as long."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 300)

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        holder = database.open_connection(queue.settings.db_path, autocommit=True)
        holder.execute("BEGIN IMMEDIATE")
        locked = threading.Event()
        release = threading.Event()

        def hold() -> None:
            locked.set()
            release.wait(30)
            holder.execute("COMMIT")

        thread = threading.Thread(target=hold)
        thread.start()
        locked.wait()
        submitted = asyncio.create_task(queue.submit(cyclegan_request()))
        # Three busy timeouts pass while the lock is held; the submission waits instead of failing.
        for _ in range(3000):
            if submitted.done() or queue.job_store.writer.lock_waits >= 3:
                break
            await asyncio.sleep(0.01)
        assert not submitted.done() and queue.job_store.writer.lock_waits >= 3
        release.set()
        job = await submitted
        thread.join()
        holder.close()
        assert queue.get(job.id).state == "queued"

    asyncio.run(scenario())


def hold_uploads(queue: Any, held: str = "") -> tuple[threading.Event, threading.Event]:
    """Make the store's put_object hang (for keys containing `held`) until the second event is set; the
    first one tells that an upload is hanging."""
    real_put = queue.store.put_object
    entered, release = threading.Event(), threading.Event()

    def hanging_put(**kwargs: Any) -> Any:
        if held in kwargs["Key"]:
            entered.set()
            release.wait(60)
        return real_put(**kwargs)

    queue.store.put_object = hanging_put
    return entered, release


def test_no_lock_is_held_across_a_slow_store_write(tmp_path: Path) -> None:
    """An upload that hangs in the store must not stop other jobs' writes (the insert used to hold the
    queue's lock across `put_object`, and every state change on the event loop waited behind it)."""

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner(), queue={"max_pending": 10, "per_user": 10})
        other = await queue.submit(cyclegan_request("other"))
        entered, release = hold_uploads(queue)
        slow = asyncio.create_task(queue.submit(cyclegan_request("slow")))
        await asyncio.to_thread(entered.wait, 30)
        assert await asyncio.wait_for(queue.cancel(other.id), 20)  # a write while the upload hangs
        assert queue.get(other.id).state == "cancelled" and not slow.done()
        release.set()
        job = await slow
        assert queue.get(job.id).state == "queued"

    asyncio.run(scenario())


class GatedRunner:
    """Reports half-way once `go` is set, then runs until it is cancelled."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    def run(
        self, job: Job, content: bytes, styles: list[bytes], progress: Any, cancel: threading.Event
    ) -> Any:
        self.started.set()
        self.go.wait(30)
        progress(0.5)
        cancel.wait(30)
        raise Cancelled()

    def unload_idle(self, idle_s: float) -> list[str]:
        return []


async def wait_for_state(queue: Any, job_id: int, check: Any, limit_s: float = 20) -> Job:
    """Poll until `check(job)` holds; the limit is a hang detector, not a speed target."""
    for _ in range(int(limit_s / 0.02)):
        job = queue.get(job_id)
        if job is not None and check(job):
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never got there: {queue.get(job_id)}")


def test_a_hanging_upload_blocks_no_other_jobs_progress_cancel_or_status(tmp_path: Path) -> None:
    """One job's inputs hang in the store (an S3 upload that never answers) while another job runs: the
    running job's progress is still written, the status reads still answer, and its cancel still lands."""

    async def scenario() -> None:
        runner = GatedRunner()
        queue = make_queue(tmp_path, runner, queue={"max_pending": 10, "per_user": 10})
        running = await queue.submit(cyclegan_request("running"))
        worker = asyncio.create_task(queue.run_worker())
        await asyncio.to_thread(runner.started.wait, 30)
        # The new job's upload hangs; the running job's report goes through.
        entered, release = hold_uploads(queue, held="/content.")
        hanging = asyncio.create_task(queue.submit(cyclegan_request("hanging")))
        await asyncio.to_thread(entered.wait, 30)

        runner.go.set()
        half = await wait_for_state(queue, running.id, lambda job: job.progress == 0.5)
        assert half.state == "running" and not hanging.done()
        # Status reads: the running job, and not the one whose inputs are not stored yet.
        assert [job.id for job in queue.active_jobs()] == [running.id]
        assert queue.position(running.id) == (1, 1) and queue.pending_count() == 2
        assert await asyncio.wait_for(queue.cancel(running.id), 20)
        await wait_for_state(queue, running.id, lambda job: job.state == "cancelled")
        assert not hanging.done()

        release.set()
        queued = await hanging
        assert queue.get(queued.id).state in ("queued", "running")
        await queue.shutdown(1)
        worker.cancel()

    asyncio.run(scenario())


def test_an_unfinished_intake_is_invisible_and_removed_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        job = await queue.submit(cyclegan_request())
        # As a crash between the row's insert and its input keys leaves it: inputs stored, keys unset.
        queue.db["jobs"].update(job.id, {"input_keys": None})
        assert queue.get(job.id) is None and queue.active_jobs() == []
        await queue.recover()
        assert queue.db["jobs"].count == 0 and object_keys(queue, "jobs/") == []

    asyncio.run(scenario())


def test_a_file_damaged_past_its_header_is_refused_by_the_engine_run(tmp_path: Path) -> None:
    """A cut-off PNG passes the header check; the engine process's decode refuses it, and the job fails
    with that message instead of a traceback."""
    damaged = image_corpus.bad_inputs()["truncated png"]

    class DecodingRunner(FakeRunner):
        def run(self, job: Job, content: bytes, styles: list[bytes], *rest: Any) -> Any:
            decode_inputs([content, *styles], self.settings)
            raise AssertionError("decoded a damaged file")

    async def scenario() -> None:
        runner = DecodingRunner()
        queue = make_queue(tmp_path, runner)
        runner.settings = queue.settings
        job = await queue.submit(cyclegan_request(content=damaged))
        failed = await run_until_final(queue, job.id)
        assert failed.state == "failed"
        assert failed.error == "the content image: this image is damaged or incomplete"

    asyncio.run(scenario())


def test_slivers_are_refused_at_intake(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner())
        with pytest.raises(imaging.ImageError, match=r"^the content image: image is 1×50000; each side"):
            await queue.submit(cyclegan_request(content=image_corpus.large_png(1, 50000)))
        assert queue.db["jobs"].count == 0

    asyncio.run(scenario())


TEN_LARGE_UPLOADS = """
import asyncio, json, resource, sys
sys.path.insert(0, sys.argv[2])
import image_corpus
from nst_daemon import db
from nst_daemon.config import Settings
from nst_daemon.jobs import JobQueue, JobRequest
from nst_daemon.store import open_store

settings = Settings.model_validate(json.loads(sys.argv[1]))
uploads = [image_corpus.large_png(8000, 5000, value=10 * n) for n in range(10)]

async def scenario():
    queue = JobQueue(db.connect(settings.db_path), open_store(settings), "nstd", settings, None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    requests = [JobRequest(source="cli", owner=str(n), engine="cyclegan", styles=["monet"], content=data)
                for n, data in enumerate(uploads)]
    jobs = await asyncio.gather(*(queue.submit(request) for request in requests))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    await queue.shutdown(1)
    return {"queued": len(jobs), "grown_mb": grown / 1024,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

print(json.dumps(asyncio.run(scenario())))
"""


def test_ten_concurrent_40_megapixel_uploads_never_decode_in_the_daemon(tmp_path: Path) -> None:
    """Ten 40-megapixel PNGs at once: decoded, each would take 120 MB of RGB (Ten users reached 3.75 GB
    with WebPs); from their headers the whole intake grows the process by a few MB. Run in a fresh
    interpreter, whose peak RSS is this scenario's alone."""
    settings = {
        "paths": {"state_dir": str(tmp_path / "s"), "models_dir": str(tmp_path / "m")},
        "queue": {"max_pending": 20, "per_user": 2},
    }
    result = subprocess.run(
        [sys.executable, "-c", TEN_LARGE_UPLOADS, json.dumps(settings), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["queued"] == 10
    assert outcome["grown_mb"] < 100, outcome  # one full decode alone is 120 MB; all ten took 1.7 GB


def test_the_watched_folder_keeps_a_file_while_the_disk_is_full(tmp_path: Path, disk: FillableDisk) -> None:
    """A full disk is not the file's fault: it stays in the inbox for the next scan instead of going to
    failed/ with an error file (the watcher used to treat every refusal but a full queue that way)."""
    from nst_daemon.watch import FolderWatcher

    async def scenario() -> None:
        queue = make_queue(tmp_path, FakeRunner(), watch={"dir": str(tmp_path / "watch")})
        watcher = FolderWatcher(queue.settings, queue)
        watcher.create_folders()
        dropped = queue.settings.watch.dir / "inbox" / "monet" / "beach.jpg"
        dropped.write_bytes(jpeg())
        disk.full = True
        await watcher._claim(dropped, "monet")
        assert dropped.exists() and queue.db["jobs"].count == 0
        assert not any((queue.settings.watch.dir / "failed" / "monet").iterdir())
        disk.full = False
        await watcher._claim(dropped, "monet")  # the next scan
        assert [job.owner for job in queue.active_jobs()] == [str(dropped)]

    asyncio.run(scenario())
