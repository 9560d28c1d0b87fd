"""The watched folder: drop an image in inbox/<style>/, get the result in outbox/<style>/.

A file is claimed only once it is complete (its size and mtime hold still for `watch.settle_s`), and a
file never gets two jobs: the job row for its path is the claim, so repeated events, the start-up
catch-up scan and a restart after a crash all agree on what is already in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from nst_daemon.config import CYCLEGAN_STYLES, Settings
from nst_daemon.errors import NstdError
from nst_daemon.fsutil import ensure_dir, write_atomic
from nst_daemon.jobs import ACTIVE_WHERE, Job, JobQueue, JobRequest, QueueFull

log = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".part", ".crdownload", ".tmp", ".download", ".partial", "~")
STYLE_FOLDERS = (*CYCLEGAN_STYLES, "default", "nst")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
RESCAN_INTERVAL_S = 30.0


def is_temporary(name: str) -> bool:
    """Names still being written by browsers, editors, rsync (.name.XXXXXX) or us; hidden files too."""
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def unique_destination(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    counter = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{counter}{suffix}"
        counter += 1
    return candidate


def _misplaced(folder: str) -> str:
    where = f"inbox/{folder}/ is not a style folder" if folder else "inbox/ itself is not a style folder"
    return f"{where}; put images in inbox/<style>/, one of: {', '.join(STYLE_FOLDERS)}"


class _Events(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        self.loop = loop
        self.callback = callback

    def _send(self, path: str | bytes) -> None:
        self.loop.call_soon_threadsafe(self.callback, Path(os.fsdecode(path)))

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._send(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._send(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._send(event.dest_path)


class FolderWatcher:
    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue
        self.root = settings.watch.dir
        self.inbox = self.root / "inbox"
        self._settling: set[Path] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._observer: Any = None
        self._rescan_task: asyncio.Task[None] | None = None
        self._stopped = False

    def create_folders(self) -> None:
        what = "a folder of the watched folder (watch.dir)"
        for top in ("inbox", "outbox", "done", "failed"):
            for style in STYLE_FOLDERS:
                ensure_dir(self.root / top / style, what)
        ensure_dir(self.root / "styles", what)

    async def start(self) -> None:
        self.create_folders()
        self.queue.set_deliverer("folder", self.deliver)
        loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._observer.schedule(_Events(loop, self.consider), str(self.inbox), recursive=True)
        self._observer.start()
        self.scan()
        self._rescan_task = asyncio.create_task(self._rescan_loop())
        log.info("watching %s", self.inbox)

    async def stop(self) -> None:
        self._stopped = True
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
        for task in [*self._tasks, *([self._rescan_task] if self._rescan_task else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def scan(self) -> None:
        """Catch up with files that arrived while the daemon was down, or whose events were missed."""
        with contextlib.suppress(FileNotFoundError):
            for top in sorted(self.inbox.iterdir()):
                if not top.is_dir() or top.is_symlink():
                    self.consider(top)
                    continue
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for entry in sorted(top.iterdir()):
                        self.consider(entry)

    async def _rescan_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(RESCAN_INTERVAL_S)
            self.scan()

    def consider(self, path: Path) -> None:
        """Called in the loop for every event and scan hit; starts at most one settle task per path."""
        if self._stopped or path in self._settling or is_temporary(path.name):
            return
        style = self._style_of(path)
        if style is None:
            return
        self._settling.add(path)
        task = asyncio.create_task(self._settle_and_claim(path, style))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _style_of(self, path: Path) -> str | None:
        """The folder of inbox/ a path sits directly in ("" for inbox/ itself), or None for anything
        deeper or outside. A folder that names no style is returned too: its files fail with the reason."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return None
        if len(relative.parts) not in (1, 2) or ".." in relative.parts:
            return None
        return relative.parts[0] if len(relative.parts) == 2 else ""

    async def _settle_and_claim(self, path: Path, folder: str) -> None:
        try:
            if not await self._wait_until_complete(path):
                return
            if self._already_claimed(path):
                return
            await self._claim(path, folder)
        except Exception:
            log.exception("watch: could not handle %s", path)
        finally:
            self._settling.discard(path)

    async def _wait_until_complete(self, path: Path) -> bool:
        interval = max(self.settings.watch.settle_s, 0.05)
        previous = None
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not self._stopped:
            try:
                stat = os.lstat(path)  # one cheap syscall; not worth a thread hop
            except FileNotFoundError:
                return False
            current = (stat.st_size, stat.st_mtime_ns)
            if current == previous:
                return True
            previous = current
            await asyncio.sleep(interval)
        return False

    def _already_claimed(self, path: Path) -> bool:
        return bool(
            self.queue.db["jobs"].count_where(
                f"source = 'folder' and owner = ? and ({ACTIVE_WHERE} or delivery = 'pending')",
                [str(path)],
            )
        )

    async def _claim(self, path: Path, folder: str) -> None:
        problem = await asyncio.to_thread(self._problem_with, path)
        if not problem and folder not in STYLE_FOLDERS:
            problem = _misplaced(folder)
        if problem:
            await asyncio.to_thread(self._move_to_failed, path, folder, problem)
            return
        style = self.settings.default_style if folder == "default" else folder
        request = JobRequest(
            source="folder",
            owner=str(path),
            engine="nst" if folder == "nst" else "cyclegan",
            content=b"",
            reply={"path": str(path), "folder": folder, "name": path.name},
        )
        try:
            if folder == "default" and not style:
                raise NstdError("no default style is configured: set [styles] default in the config")
            request.content = await asyncio.to_thread(path.read_bytes)
            if folder == "nst":
                request.style_images = await asyncio.to_thread(self._style_images)
            else:
                request.styles = [style]
            job = await self.queue.submit(request)
        except QueueFull:
            log.info("watch: queue full; %s waits for the next scan", path.name)
            return
        except NstdError as exc:
            await asyncio.to_thread(self._move_to_failed, path, folder, exc.message)
            return
        log.info("watch: %s/%s -> job %s", folder, path.name, job.id)

    def _problem_with(self, path: Path) -> str | None:
        if path.is_symlink():
            # A link could point anywhere on the machine; only real files dropped here are read.
            return "symbolic links are not followed; copy the file into the folder instead"
        if not path.is_file():
            return "not a regular file"
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return f"{path.suffix or 'a file without an extension'} is not an image type nstd reads"
        return None

    def _style_images(self) -> list[bytes]:
        folder = self.root / "styles"
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not is_temporary(p.name) and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise NstdError(f"multi-style NST needs style images: put one or more in {folder}")
        return [p.read_bytes() for p in files]

    # --- delivery (called by the queue when a folder job is final) ---

    async def deliver(self, job: Job, result: bytes | None) -> None:
        await asyncio.to_thread(self._deliver_sync, job, result)

    def _deliver_sync(self, job: Job, result: bytes | None) -> None:
        source = Path(job.reply["path"])
        folder = job.reply["folder"]
        if job.state == "done" and result is not None:
            label = job.styles[0] if job.engine == "cyclegan" else "nst"
            write_atomic(self.root / "outbox" / folder / f"{source.stem}.{label}.jpg", result)
            if source.exists():
                shutil.move(source, unique_destination(self.root / "done" / folder, source.name))
            return
        self._move_to_failed(source, folder, job.error or job.state)

    def _move_to_failed(self, source: Path, folder: str, reason: str) -> None:
        failed_dir = self.root / "failed" / folder
        destination = unique_destination(failed_dir, source.name)
        if source.exists() or source.is_symlink():
            shutil.move(source, destination)
        write_atomic(failed_dir / f"{destination.name}.error.txt", (reason.strip() + "\n").encode())
        log.warning("watch: %s failed: %s", f"{folder}/{source.name}" if folder else source.name, reason)
