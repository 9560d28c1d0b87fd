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
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from nst_daemon import named_styles
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError, describe_failure
from nst_daemon.fsutil import ensure_dir
from nst_daemon.imaging import ImageError
from nst_daemon.jobs import JobQueue, JobRequest
from nst_daemon.style_catalog import engine_for_style, style_keys
from nst_daemon.style_names import normalize_style
from nst_daemon.watch_files import (
    STYLE_IMAGE_ENGINES,
    RefusedFile,
    log_label,
    printable,
    read_dropped_file,
)
from nst_daemon.watch_outbox import Outbox

log = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".part", ".crdownload", ".tmp", ".download", ".partial", "~")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
RESCAN_INTERVAL_S = 30.0
CLOSED_RECHECK_S = 0.05  # after the writer closed a file: one more look at its size, this much later
# Unexpected errors (not an OSError: those pass, like a full disk) a file may cause before it is moved to
# failed/ with the error as its reason, rather than being retried at every scan for ever.
MAX_TROUBLES = 3


def is_temporary(name: str) -> bool:
    """Names still being written by browsers, editors, rsync (.name.XXXXXX) or us; hidden files too."""
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def style_folders(settings: Settings) -> tuple[str, ...]:
    """inbox/<folder>/ for each of the catalog's pretrained styles, the default style and NST."""
    return (*style_keys(settings), "default", *STYLE_IMAGE_ENGINES)


def _misplaced(folder: str, folders: tuple[str, ...]) -> str:
    where = f"inbox/{folder}/ is not a style folder" if folder else "inbox/ itself is not a style folder"
    return (
        f"{where}; put images in inbox/<style>/, one of: {', '.join(folders)}, "
        "or a named style (`nstd styles list`)"
    )


def create_style_folders(settings: Settings, name: str) -> Path:
    """inbox/, outbox/, done/ and failed/ NAME for a named style; returns the inbox one. `nstd styles add`
    calls it, so the folder is there at once, even while the daemon runs: its watch is recursive and the
    claim looks the style up in the database, so the daemon needs no telling."""
    root = settings.watch.dir
    for top in ("inbox", "outbox", "done", "failed"):
        ensure_dir(root / top / name, "a folder of the watched folder (watch.dir)")
    return root / "inbox" / name


class _Events(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any, closed: Any) -> None:
        self.loop = loop
        self.callback = callback
        self.closed = closed

    def _send(self, path: str | bytes, callback: Any = None) -> None:
        self.loop.call_soon_threadsafe(callback or self.callback, Path(os.fsdecode(path)))

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._send(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        # Linux's IN_CLOSE_WRITE: the writer is done with the file, so its settle wait may end early.
        if not event.is_directory:
            self._send(event.src_path, self.closed)

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
        self._troubles: dict[Path, int] = {}
        self._closed: dict[Path, asyncio.Event] = {}  # set when a settling file's writer closes it
        self.outbox = Outbox(self.root, self.inbox, queue)

    def create_folders(self) -> None:
        what = "a folder of the watched folder (watch.dir)"
        for top in ("inbox", "outbox", "done", "failed"):
            for style in style_folders(self.settings):
                ensure_dir(self.root / top / style, what)
        ensure_dir(self.root / "styles", what)
        for named in named_styles.list_styles(self.queue.db):
            create_style_folders(self.settings, named.name)

    async def start(self) -> None:
        self.create_folders()
        self.queue.set_deliverer("folder", self.outbox.deliver)  # watch_outbox.py: results and originals
        loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._observer.schedule(_Events(loop, self.consider, self.closed), str(self.inbox), recursive=True)
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

    def closed(self, path: Path) -> None:
        """A file's writer closed it: a settle in progress ends after one short look instead of a full
        `watch.settle_s`; a file not yet settling starts as any event does."""
        if path in self._settling:
            self._closed.setdefault(path, asyncio.Event()).set()
        else:
            self.consider(path)

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
            self._troubles.pop(path, None)
        except Exception as exc:
            await self._trouble(path, folder, exc)
        finally:
            self._settling.discard(path)
            self._closed.pop(path, None)

    async def _trouble(self, path: Path, folder: str, exc: Exception) -> None:
        """An unexpected error while taking a file: one line in the log, and the file waits in the inbox
        for the next scan, since such errors mostly pass (a full disk, a locked database). One that keeps
        coming back for a file is that file's doing: it goes to failed/ with the error as its reason."""
        label = log_label(folder, path.name)
        count = self._troubles[path] = self._troubles.get(path, 0) + 1
        log.debug("watch: the error for %s in full", label, exc_info=exc)
        if isinstance(exc, OSError) or count < MAX_TROUBLES:
            log.warning("watch: %s waits in the inbox: %s", label, printable(describe_failure(exc)))
            return
        self._troubles.pop(path, None)
        reason = f"nstd could not take this file: {describe_failure(exc)}"
        try:
            await asyncio.to_thread(self.outbox.move_to_failed, path, folder, reason)
        except OSError as move_error:
            log.warning("watch: %s waits in the inbox: %s", label, printable(describe_failure(move_error)))

    async def _wait_until_complete(self, path: Path) -> bool:
        """True once the file stopped changing for `watch.settle_s`, or, after its writer closed it
        (inotify's close-after-write), for CLOSED_RECHECK_S: a copy over the network or a slow writer
        still gets the full wait, and a photo saved at once is taken a second sooner."""
        interval = max(self.settings.watch.settle_s, CLOSED_RECHECK_S)
        closed = self._closed.setdefault(path, asyncio.Event())
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
            if closed.is_set():
                closed.clear()
                await asyncio.sleep(CLOSED_RECHECK_S)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), interval)
        return False

    def _already_claimed(self, path: Path) -> bool:
        if _name_problem(path):
            return False  # SQLite cannot hold the name, so no job can have it
        return self.queue.job_store.folder_file_taken(str(path))

    async def _claim(self, path: Path, folder: str) -> None:
        problem = self._problem_with(path)
        # A named style is looked up at each claim: one added while the daemon runs works at once.
        folders = style_folders(self.settings)
        named = None if problem or folder in folders else self._named_style(folder)
        if not problem and folder not in folders and named is None:
            problem = _misplaced(folder, folders)
        if problem:
            await asyncio.to_thread(self.outbox.move_to_failed, path, folder, problem)
            return
        style = self.settings.default_style if folder == "default" else folder
        if folder == "default" and style and style not in folders:
            named = self._named_style(style)  # the default may name a named style
        request = JobRequest(
            source="folder",
            owner=str(path),
            engine=STYLE_IMAGE_ENGINES.get(folder) or engine_for_style(style, self.settings) or "cyclegan",
            content=b"",
            reply={"path": str(path), "folder": folder, "name": path.name},
        )
        style_names: list[str] = []
        try:
            if folder == "default" and not style:
                raise NstdError("no default style is configured: set [styles] default in the config")
            if folder == "default" and style not in folders and named is None:
                raise NstdError(
                    f"the default style {style!r} is neither a built-in style nor a named style "
                    "(`nstd styles list`)"
                )
            # The one read of the dropped file: what it is and how large is checked on the opened file.
            request.content = await asyncio.to_thread(
                read_dropped_file, path, self._max_bytes, beneath=self.inbox
            )
            if named is not None:
                request.engine, request.styles, request.params = named.engine, [named.name], named.params
                request.style_images = await asyncio.to_thread(
                    named_styles.load_images, self.settings, self.queue.store, named
                )
                style_names = [f"{named.name} image {n}" for n in range(1, len(request.style_images) + 1)]
            elif folder in STYLE_IMAGE_ENGINES:
                style_names, request.style_images = await asyncio.to_thread(self._style_images)
            else:
                request.styles = [style]
        except FileNotFoundError:
            return  # taken away meanwhile: nothing to do, nothing to report
        except NstdError as exc:
            await asyncio.to_thread(self.outbox.move_to_failed, path, folder, exc.message)
            return
        try:
            job = await self.queue.submit(request)
        except ImageError as exc:
            await asyncio.to_thread(self.outbox.move_to_failed, path, folder, _image_reason(exc, style_names))
            return
        except NstdError as exc:
            # Not the file's fault (the queue is full, a full disk, shutting down): try again later.
            log.info(
                "watch: %s waits for the next scan: %s", log_label(folder, path.name), printable(exc.message)
            )
            return
        log.info("watch: %s -> job %s", log_label(folder, path.name), job.id)

    def _named_style(self, folder: str) -> named_styles.NamedStyle | None:
        name = normalize_style(folder)
        return named_styles.get(self.queue.db, name) if name else None

    @property
    def _max_bytes(self) -> int:
        return self.settings.images.max_bytes

    def _problem_with(self, path: Path) -> str | None:
        """What the name alone tells (no file system access: what the file is, the read checks)."""
        problem = _name_problem(path)
        if problem:
            return problem
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return f"{path.suffix or 'a file without an extension'} is not an image type nstd reads"
        return None

    def _style_images(self) -> tuple[list[str], list[bytes]]:
        """The image files of styles/ in name order, as (names, contents). A link, a pipe or an oversized
        file there is refused as in the inbox: the job fails with a reason naming the style file."""
        folder = self.root / "styles"
        names, images = [], []
        with os.scandir(folder) as entries:
            candidates = sorted(
                (
                    entry
                    for entry in entries
                    if not is_temporary(entry.name)
                    and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
                    and not entry.is_dir(follow_symlinks=False)
                ),
                key=lambda entry: entry.name,
            )
        for entry in candidates:
            try:
                images.append(read_dropped_file(Path(entry.path), self._max_bytes, beneath=folder))
            except FileNotFoundError:
                continue
            except RefusedFile as exc:
                raise RefusedFile(f"style image {entry.name!r} in {folder}: {exc.message}") from None
            names.append(entry.name)
        if not images:
            raise NstdError(f"multi-style NST needs style images: put one or more in {folder}")
        return names, images


def _name_problem(path: Path) -> str | None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 (os.fsdecode's surrogates): SQLite, the log and Telegram need text.
        return "the file name is not valid UTF-8; rename the file"
    return None


def _image_reason(exc: ImageError, style_names: list[str]) -> str:
    """The reason an image was refused, naming the style file when it is one of them."""
    index = getattr(exc, "image_index", None)
    reason = getattr(exc, "reason", None) or exc.message
    if index is None or index == 0:
        return reason
    if index <= len(style_names):
        return f"style image {style_names[index - 1]!r}: {reason}"
    return exc.message
