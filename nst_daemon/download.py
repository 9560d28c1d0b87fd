"""Download one large file over HTTP into a `.part` file: resume, retry, stall timeout, size cap, progress.

This module only fetches bytes. The caller holds the per-file lock (`file_lock`), checks the digest and
decides whether the finished `.part` file becomes an installed model (see catalog.py); nothing here installs
anything.

A failed download keeps its `.part` file so that the next run resumes with a Range request, except when the
bytes themselves are wrong (over the size cap), which deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nst_daemon import __version__
from nst_daemon.backoff import Backoff
from nst_daemon.errors import NstdError

# Retry policy. Module-level so that tests can shrink the delays to milliseconds: 1 s before the first
# retry, doubling on each consecutive failure up to 30 s; a server's Retry-After is honoured up to 60 s.
RETRY = Backoff.exponential(1.0, 30.0, max_retry_after=60.0)
MAX_ATTEMPTS = 6  # consecutive attempts that make no progress before giving up
CONNECT_TIMEOUT = 30.0
STALL_TIMEOUT = 60.0  # seconds without a single byte before the connection counts as dead
CHUNK_SIZE = 1 << 20

_RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(NstdError):
    """A download that failed for good (after retries, or at once where retrying cannot help)."""


class HttpStatusError(DownloadError):
    """The server answered with a status that retrying will not change (most 4xx)."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url} answered HTTP {status} {reason}".rstrip())
        self.url = url
        self.status = status


class Unreachable(DownloadError):
    """The server was never reached (its name does not resolve, or every connection failed): most
    likely this machine is offline. The caller says what to do instead."""


class SizeCapExceeded(DownloadError):
    """The server sent (or announced) more bytes than the caller allows; the partial file is deleted."""


@dataclass(frozen=True)
class Download:
    path: Path  # the complete `.part` file
    size: int
    sha256: str
    requests: int  # HTTP requests made, retries included
    resumed_from: int  # bytes reused from an earlier run (0 = downloaded from the start)


def check_url(url: str) -> None:
    """Refuse anything but http(s): file://, ftp:// and friends have no business in a model download."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"refusing to download {url!r}: only http:// and https:// URLs are allowed")


@contextlib.contextmanager
def _lock_file(path: Path) -> Iterator[int]:
    """The lock file's descriptor; closing it releases any flock taken on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive flock on `path`, held across processes; `on_wait` runs once if someone else holds it.

    The lock file is never deleted: unlinking it while another process waits on the old inode would let a
    third process lock a new inode and run concurrently.
    """
    with _lock_file(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """`file_lock` without the wait: yields False at once when another process holds it."""
    with _lock_file(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def fetch(
    url: str,
    part: Path,
    *,
    max_bytes: int,
    expected_size: int | None = None,
    label: str | None = None,
    console: Console | None = None,
    stall_timeout: float | None = None,
) -> Download:
    """Download `url` into `part`, resuming whatever `part` already holds; returns size and sha256.

    `max_bytes` caps the file: a larger announced or received size aborts and deletes `part`.
    `expected_size` only sizes the progress bar when the server does not say.
    """
    check_url(url)
    part.parent.mkdir(parents=True, exist_ok=True)
    with part.open("ab") as handle:
        state = _State(part=part, handle=handle, hasher=hashlib.sha256())
        # Hash what an earlier run left so the digest covers the whole file without a second pass.
        state.offset = _hash_prefix(part, state.hasher)
        if state.offset > max_bytes:
            state.restart()
        resumed_from = state.offset
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=console is None,
        )
        try:
            with progress:
                label = label or part.name
                task = progress.add_task(label, total=expected_size, completed=state.offset)
                requests = asyncio.run(
                    _download(
                        url,
                        state,
                        label=label,
                        max_bytes=max_bytes,
                        progress=progress,
                        task=task,
                        stall_timeout=STALL_TIMEOUT if stall_timeout is None else stall_timeout,
                    )
                )
        except SizeCapExceeded:
            handle.close()
            part.unlink(missing_ok=True)
            raise
        except BaseException:
            # Keep a partial file for the next run to resume, but not an empty one.
            if state.offset == 0:
                handle.close()
                part.unlink(missing_ok=True)
            raise
        handle.flush()
        os.fsync(handle.fileno())
    return Download(
        path=part,
        size=state.offset,
        sha256=state.hasher.hexdigest(),
        requests=requests,
        resumed_from=resumed_from if state.resumed else 0,
    )


@dataclass
class _State:
    part: Path
    handle: BinaryIO
    hasher: hashlib._Hash
    offset: int = 0
    total: int | None = None
    resumed: bool = False

    def restart(self) -> None:
        self.handle.truncate(0)
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.total = None


class _Retry(Exception):
    """One attempt failed in a way the next attempt may not."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _hash_prefix(path: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            hasher.update(chunk)
            size += len(chunk)
    return size


async def _download(
    url: str,
    state: _State,
    *,
    label: str,
    max_bytes: int,
    progress: Progress,
    task: TaskID,
    stall_timeout: float,
) -> int:
    # sock_read is the stall detector: it bounds the wait for the next bytes, not the whole transfer.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=stall_timeout)
    # identity encoding: byte offsets must be offsets into the file itself, or Range resumption breaks.
    headers = {"Accept-Encoding": "identity", "User-Agent": f"nstd/{__version__}"}
    failures = 0
    requests = 0
    connect_failures = 0  # attempts that never got a connection: all of them means offline
    async with aiohttp.ClientSession(timeout=timeout, headers=headers, auto_decompress=False) as session:
        while True:
            requests += 1
            before = state.offset
            try:
                await _attempt(session, url, state, max_bytes=max_bytes, progress=progress, task=task)
                return requests
            except _Retry as exc:
                reason, retry_after = str(exc), exc.retry_after
            except aiohttp.ClientConnectorDNSError as exc:
                raise Unreachable(f"cannot resolve the host of {url}: {exc.os_error or exc}") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                reason, retry_after = _describe(exc, stall_timeout), None
                connect_failures += isinstance(exc, aiohttp.ClientConnectorError)
            except aiohttp.ClientError as exc:
                raise DownloadError(f"downloading {url} failed: {exc}") from None
            # A retry budget per lack of progress: a flaky link that keeps delivering still finishes.
            failures = 1 if state.offset > before else failures + 1
            if failures >= MAX_ATTEMPTS:
                kept = f"; run the pull again to resume from {state.offset} bytes" if state.offset else ""
                error = Unreachable if connect_failures == requests else DownloadError
                raise error(f"giving up on {url} after {failures} failed attempts: {reason}{kept}")
            delay = RETRY.delay(failures, retry_after)
            progress.console.print(escape(f"{label}: {reason}; retrying in {delay:.2g} s"), highlight=False)
            await asyncio.sleep(delay)


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    state: _State,
    *,
    max_bytes: int,
    progress: Progress,
    task: TaskID,
) -> None:
    request_headers = {"Range": f"bytes={state.offset}-"} if state.offset else {}
    async with session.get(url, headers=request_headers) as response:
        status = response.status
        if status == 416 and state.offset:
            match = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == state.offset:
                # An earlier run already received every byte; only the rename was missing.
                state.total = state.offset
                state.resumed = True
                return
            state.restart()
            raise _Retry("the server rejected the resume offset (HTTP 416); starting over")
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status} {response.reason or ''}".rstrip(), _retry_after(response))
        if status == 206 and state.offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != state.offset:
                state.restart()
                raise _Retry("the server resumed at the wrong offset; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
            state.resumed = True
        elif status == 200:
            if state.offset:
                # The server ignores Range: the body is the whole file again.
                state.restart()
                state.resumed = False
            total = response.content_length
        else:
            raise HttpStatusError(url, status, response.reason or "")

        if total is not None and total > max_bytes:
            raise SizeCapExceeded(f"{url} is {total} bytes, over the {max_bytes}-byte cap; refusing it")
        if total is not None:
            _check_disk_space(state.part, total - state.offset)
        state.total = total
        progress.update(task, total=total, completed=state.offset)
        async for chunk in response.content.iter_chunked(CHUNK_SIZE):
            if state.offset + len(chunk) > max_bytes:
                raise SizeCapExceeded(f"{url} sent more than the {max_bytes}-byte cap; download deleted")
            # Plain blocking writes: a pull is the only thing this event loop runs.
            state.handle.write(chunk)
            state.hasher.update(chunk)
            state.offset += len(chunk)
            progress.update(task, completed=state.offset)
        if total is not None and state.offset != total:
            raise _Retry(f"connection closed after {state.offset} of {total} bytes")


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _describe(exc: BaseException, stall_timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no data for {stall_timeout:g} s (stalled connection)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection dropped mid-transfer"
    return str(exc) or type(exc).__name__


def _check_disk_space(part: Path, needed: int) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(f"not enough disk space in {part.parent}: {needed} bytes needed, {free} free")
