"""The watched folder's file handling, without a daemon: reading dropped files, names, no-replace writes."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from toml_config import write_config

from nst_daemon import watch_files
from nst_daemon.config import load_settings
from nst_daemon.jobs import Job
from nst_daemon.watch import FolderWatcher
from nst_daemon.watch_files import (
    RefusedFile,
    candidate_names,
    fit_name,
    move_new,
    printable,
    publish,
    read_dropped_file,
    stage,
    write_new,
)

MB = 1024 * 1024


def read_in_a_thread(path: Path, max_bytes: int) -> Any:
    """read_dropped_file in a thread that the test never waits on for good: a read that blocks (a FIFO
    opened without O_NONBLOCK waits for a writer for ever) shows as a thread still alive."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["data"] = read_dropped_file(path, max_bytes)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        # Release it: a writer that opens and closes gives the blocked reader its end of file.
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"reading {path.name} blocked")
    return outcome.get("error", outcome.get("data"))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    error = read_in_a_thread(fifo, MB)
    assert isinstance(error, RefusedFile) and error.message == "not a regular file"


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff secret")
    link = tmp_path / "link.jpg"
    link.symlink_to(secret)
    with pytest.raises(RefusedFile, match="symbolic links are not followed"):
        read_dropped_file(link, MB)
    assert read_dropped_file(secret, MB) == b"\xff\xd8\xff secret"


def test_a_folder_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    (inbox / "monet").mkdir(parents=True)
    (inbox / "monet" / "x.jpg").write_bytes(b"dropped")
    assert read_dropped_file(inbox / "monet" / "x.jpg", MB, beneath=inbox) == b"dropped"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(b"not for the inbox")
    (inbox / "monet").rename(tmp_path / "old-monet")
    (inbox / "monet").symlink_to(elsewhere)  # after the file was seen, before it is read
    with pytest.raises(RefusedFile, match="symbolic links are not followed"):
        read_dropped_file(inbox / "monet" / "x.jpg", MB, beneath=inbox)
    (inbox / "monet").unlink()
    (inbox / "monet").write_bytes(b"a file where the folder was")
    with pytest.raises(RefusedFile, match="Not a directory"):
        read_dropped_file(inbox / "monet" / "x.jpg", MB, beneath=inbox)


def test_a_huge_sparse_file_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:
        handle.truncate(1536 * MB)  # 1.5 GB that take no disk: reading them would take 1.5 GB of memory
    tracemalloc.start()
    try:
        with pytest.raises(RefusedFile) as refused:
            read_dropped_file(huge, 50 * MB)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.message == "file is 1536.0 MB; the limit is 50 MB (images.max_bytes)"
    assert peak < MB


def test_a_file_that_grew_past_the_limit_after_fstat_is_refused(tmp_path: Path, monkeypatch) -> None:
    grown = tmp_path / "grown.jpg"
    grown.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size fstat saw, before a writer appended
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 10, *info[7:]))

    monkeypatch.setattr(watch_files.os, "fstat", stale_fstat)
    assert read_dropped_file(grown, 100) == b"x" * 100
    with pytest.raises(RefusedFile, match="limit"):
        read_dropped_file(grown, 99)


def test_an_unreadable_file_has_a_reason(tmp_path: Path, monkeypatch) -> None:
    def denied(*_args: Any, **_kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(watch_files.os, "open", denied)
    with pytest.raises(RefusedFile, match="cannot read it: Permission denied"):
        read_dropped_file(tmp_path / "x.jpg", MB)


def name_of_255_bytes(char: str, suffix: str = ".jpg") -> str:
    """A name of exactly 255 bytes in UTF-8, mostly `char`: the longest a Linux file system takes."""
    room = 255 - len(suffix)
    count = room // len(char.encode())
    return "a" * (room - count * len(char.encode())) + char * count + suffix


@pytest.mark.parametrize("char", ["a", "é", "漢", "🎨"])  # 1, 2, 3 and 4 bytes in UTF-8
def test_long_names_are_cut_in_bytes_at_a_character_boundary(char: str) -> None:
    name = name_of_255_bytes(char)
    assert len(os.fsencode(name)) == 255
    stem = name.removesuffix(".jpg")
    for tail in (".monet.jpg", "-12.jpg", ".jpg.error.txt"):
        fitted = fit_name(stem, tail, 255)
        encoded = os.fsencode(fitted)
        assert 255 - 4 < len(encoded) <= 255, (tail, len(encoded))  # at most one character short
        assert fitted.endswith(tail) and stem.startswith(fitted.removesuffix(tail))
        encoded.decode("utf-8")  # whole characters only
    assert fit_name("beach", ".monet.jpg", 255) == "beach.monet.jpg"


def test_candidate_names_stay_distinct_when_cut() -> None:
    names = candidate_names("é" * 200, ".jpg", 255)
    first = [next(names) for _ in range(12)]
    assert len(set(first)) == 12
    assert all(len(os.fsencode(name)) <= 255 for name in first)
    assert first[11].endswith("-11.jpg")


def test_write_new_never_replaces(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    first = write_new(outbox, "beach", ".monet.jpg", b"first")
    second = write_new(outbox, "beach", ".monet.jpg", b"second")
    third = write_new(outbox, "beach", ".monet.jpg", b"third")
    assert [first.name, second.name, third.name] == [
        "beach.monet.jpg",
        "beach-1.monet.jpg",
        "beach-2.monet.jpg",
    ]
    assert [p.read_bytes() for p in (first, second, third)] == [b"first", b"second", b"third"]
    assert sorted(p.name for p in outbox.iterdir()) == sorted([first.name, second.name, third.name])


def test_write_new_without_hard_links_still_never_replaces(tmp_path: Path, monkeypatch) -> None:
    def no_links(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(watch_files.os, "link", no_links)
    outbox = tmp_path / "outbox"
    first = write_new(outbox, "beach", ".monet.jpg", b"first")
    second = write_new(outbox, "beach", ".monet.jpg", b"second")
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert len(list(outbox.iterdir())) == 2


def test_move_new_moves_links_and_pipes_as_they_are(tmp_path: Path) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    target = tmp_path / "target.jpg"
    target.write_bytes(b"target")
    (inbox / "link.jpg").symlink_to(target)
    os.mkfifo(inbox / "pipe.jpg")
    (done).mkdir()
    (done / "link.jpg").write_bytes(b"an earlier original")
    moved_link = move_new(inbox / "link.jpg", done)
    moved_pipe = move_new(inbox / "pipe.jpg", done)
    assert moved_link.name == "link-1.jpg" and moved_link.is_symlink()
    assert (done / "link.jpg").read_bytes() == b"an earlier original"
    assert moved_pipe.name == "pipe.jpg" and not moved_pipe.is_file()
    assert target.read_bytes() == b"target" and not list(inbox.iterdir())


def test_move_new_does_not_follow_a_folder_swapped_for_a_link(tmp_path: Path) -> None:
    inbox, elsewhere, failed = tmp_path / "inbox", tmp_path / "state", tmp_path / "failed"
    inbox.mkdir()
    elsewhere.mkdir()
    (elsewhere / "nstd.db").write_bytes(b"the daemon's own file")
    (inbox / "monet").symlink_to(elsewhere)
    with pytest.raises(OSError) as error:
        move_new(inbox / "monet" / "nstd.db", failed, beneath=inbox)
    assert error.value.errno == errno.ELOOP
    assert (elsewhere / "nstd.db").read_bytes() == b"the daemon's own file"
    assert not failed.exists() or not list(failed.iterdir())


def test_move_new_keeps_room_for_the_reason_file(tmp_path: Path) -> None:
    inbox, failed = tmp_path / "inbox", tmp_path / "failed"
    inbox.mkdir()
    failed.mkdir()
    (failed / "x.jpg.error.txt").write_text("an older reason whose file was taken away")
    (inbox / "x.jpg").write_bytes(b"x")
    assert move_new(inbox / "x.jpg", failed, reserve_suffix=".error.txt").name == "x-1.jpg"
    long_name = "ü" * 125 + ".txt"  # 254 bytes
    (inbox / long_name).write_bytes(b"y")
    moved = move_new(inbox / long_name, failed, reserve_suffix=".error.txt")
    assert moved.name.endswith(".txt") and len(os.fsencode(moved.name + ".error.txt")) <= 255


def test_printable_escapes_control_characters_only() -> None:
    assert printable("évian\nwatch: forged\x1b[2J") == "évian\\nwatch: forged\\x1b[2J"
    assert printable("漢字 photo.jpg") == "漢字 photo.jpg"


# --- delivery, with a stand-in for the queue ---------------------------------------------------------


class RecordingQueue:
    def __init__(self) -> None:
        self.replies: dict[int, dict[str, Any]] = {}
        self.db = sqlite_utils.Database(memory=True)  # no named styles: the watcher finds an empty table

    async def record_reply(self, job_id: int, values: dict[str, Any]) -> None:
        self.replies.setdefault(job_id, {}).update(values)


def folder_job(job_id: int, path: Path, state: str = "done", **reply: Any) -> Job:
    return Job(
        id=job_id,
        source="folder",
        owner=str(path),
        engine="cyclegan",
        styles=["monet"],
        params={},
        state=state,
        progress=1.0,
        attempts=1,
        error=None if state == "done" else "the engine ran out of memory",
        input_keys=[],
        output_key=f"jobs/{job_id}/result.jpg",
        delivery="pending",
        delivery_attempts=0,
        reply={"path": str(path), "folder": "monet", "name": path.name, **reply},
        created_at=0.0,
        started_at=0.0,
        finished_at=0.0,
    )


@pytest.fixture
def watcher(tmp_path: Path) -> FolderWatcher:
    config = write_config(tmp_path / "config.toml", {"watch": {"dir": str(tmp_path / "watch")}})
    watcher = FolderWatcher(load_settings(config), RecordingQueue())  # type: ignore[arg-type]
    watcher.create_folders()
    return watcher


def test_the_same_name_twice_gets_two_results(watcher: FolderWatcher) -> None:
    source = watcher.inbox / "monet" / "beach.jpg"

    async def drop_and_deliver(job_id: int, content: bytes, result: bytes) -> None:
        source.write_bytes(content)
        await watcher.outbox.deliver(folder_job(job_id, source), result)

    asyncio.run(drop_and_deliver(1, b"photo 1", b"result 1"))
    asyncio.run(drop_and_deliver(2, b"photo 2", b"result 2"))
    outbox, done = watcher.root / "outbox" / "monet", watcher.root / "done" / "monet"
    assert watcher.queue.replies == {
        1: {"result_path": str(outbox / "beach.monet.jpg"), "original_path": str(done / "beach.jpg")},
        2: {"result_path": str(outbox / "beach-1.monet.jpg"), "original_path": str(done / "beach-1.jpg")},
    }
    assert (outbox / "beach.monet.jpg").read_bytes() == b"result 1"
    assert (outbox / "beach-1.monet.jpg").read_bytes() == b"result 2"
    assert (done / "beach.jpg").read_bytes() == b"photo 1"
    assert (done / "beach-1.jpg").read_bytes() == b"photo 2"
    assert sorted(p.name for p in outbox.iterdir()) == ["beach-1.monet.jpg", "beach.monet.jpg"]


@pytest.mark.parametrize("recorded", [False, True])
def test_a_redelivery_after_a_crash_writes_no_second_copy(watcher: FolderWatcher, recorded: bool) -> None:
    source = watcher.inbox / "monet" / "beach.jpg"
    source.write_bytes(b"photo")
    outbox = watcher.root / "outbox" / "monet"
    # The first attempt published the result, then the daemon died: before the path was recorded in
    # the job's row, or after it but before the delivery was marked done.
    staged = outbox / ".nstd-job-7.tmp"
    stage(staged, b"result")
    published = publish(staged, "beach", ".monet.jpg")
    reply = {"result_path": str(published)} if recorded else {}
    asyncio.run(watcher.outbox.deliver(folder_job(7, source, **reply), b"result"))
    assert [p.name for p in outbox.iterdir()] == ["beach.monet.jpg"]
    assert watcher.queue.replies[7]["original_path"] == str(watcher.root / "done" / "monet" / "beach.jpg")
    assert watcher.queue.replies[7].get("result_path", reply.get("result_path")) == str(published)


def test_a_failed_job_is_moved_with_its_reason_once(watcher: FolderWatcher) -> None:
    source = watcher.inbox / "monet" / "beach.jpg"
    source.write_bytes(b"photo")
    asyncio.run(watcher.outbox.deliver(folder_job(3, source, state="failed"), None))
    failed = watcher.root / "failed" / "monet"
    assert watcher.queue.replies[3] == {"original_path": str(failed / "beach.jpg")}
    assert (failed / "beach.jpg.error.txt").read_text() == "the engine ran out of memory\n"
    # Delivered again after a crash that came before the delivery was marked done: nothing more.
    asyncio.run(
        watcher.outbox.deliver(folder_job(3, source, state="failed", **watcher.queue.replies[3]), None)
    )
    assert sorted(p.name for p in failed.iterdir()) == ["beach.jpg", "beach.jpg.error.txt"]
