"""The watched folder's outgoing side: when a folder job is final, its result becomes a file of its own in
outbox/<style>/ and the original moves to done/<style>/, or to failed/<style>/ with its reason beside it.
Each step can run again after a crash without writing a second copy or moving a file twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from nst_daemon.jobs import Job, JobQueue
from nst_daemon.style_catalog import file_label
from nst_daemon.watch_files import (
    ERROR_SUFFIX,
    STYLE_IMAGE_ENGINES,
    find_published,
    log_label,
    move_new,
    printable,
    publish,
    split_name,
    stage,
    unstage,
    write_new,
)

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, root: Path, inbox: Path, queue: JobQueue) -> None:
        self.root = root
        self.inbox = inbox
        self.queue = queue

    async def deliver(self, job: Job, result: bytes | None) -> None:
        """Write the result as a file of its own, move the original away, and record both in the job's
        reply (`result_path`, `original_path`: what `nstd jobs show` tells)."""
        source = Path(job.reply["path"])
        folder = job.reply["folder"]
        if job.state == "done" and result is not None:
            staged = self.root / "outbox" / folder / f".nstd-job-{job.id}.tmp"
            result_path = await asyncio.to_thread(self._write_result, job, staged, result)
            if str(result_path) != job.reply.get("result_path"):
                await self.queue.record_reply(job.id, {"result_path": str(result_path)})
            # Only once the path is recorded: until then the staged name is how a redelivery after a
            # crash finds the result it already wrote, rather than writing a second copy.
            await asyncio.to_thread(unstage, staged)
            original = await asyncio.to_thread(self._move_original, source, self.root / "done" / folder)
        elif job.reply.get("original_path"):
            return  # moved to failed/ with its reason by an attempt that stopped before it was done
        else:
            original = await asyncio.to_thread(self.move_to_failed, source, folder, job.error or job.state)
        if original is not None:
            await self.queue.record_reply(job.id, {"original_path": str(original)})

    @staticmethod
    def _write_result(job: Job, staged: Path, result: bytes) -> Path:
        recorded = job.reply.get("result_path")
        if recorded and os.path.lexists(recorded):
            return Path(recorded)  # written and recorded by an attempt that stopped before it was done
        published = find_published(staged)
        if published is None:
            stage(staged, result)
            folder = job.reply.get("folder")
            label = job.params.get("style_name") or (
                folder if folder in STYLE_IMAGE_ENGINES else file_label(job.engine, job.styles)
            )
            stem, _suffix = split_name(job.reply["name"])
            # Never the name of an existing file: the same photo dropped twice gets two results.
            published = publish(staged, stem, f".{label}.jpg")
        return published

    def _move_original(self, source: Path, folder: Path) -> Path | None:
        try:
            return move_new(source, folder, beneath=self._inbox_of(source))
        except FileNotFoundError:
            return None  # moved by an earlier attempt, or taken away by the user

    def _inbox_of(self, source: Path) -> Path | None:
        """The inbox, for moving `source` out of it without following a folder swapped for a link (None
        for a job from before watch.dir changed)."""
        return self.inbox if source.is_relative_to(self.inbox) else None

    def move_to_failed(self, source: Path, folder: str, reason: str) -> Path | None:
        """Move `source` to failed/ with `<name>.error.txt` beside it giving the reason; the name is
        chosen (numbered, cut to fit) so that neither file replaces one already there."""
        failed_dir = self.root / "failed" / folder
        try:
            destination: Path | None = move_new(
                source, failed_dir, beneath=self._inbox_of(source), reserve_suffix=ERROR_SUFFIX
            )
        except FileNotFoundError:
            destination = None
        name = destination.name if destination is not None else source.name
        write_new(failed_dir, name, ERROR_SUFFIX, (reason.strip() + "\n").encode())
        log.warning("watch: %s failed: %s", log_label(folder, source.name), printable(reason))
        return destination
