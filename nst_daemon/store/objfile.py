"""One object = one file: a fixed binary prefix, a JSON header, then the body.

Body and metadata live in the same file, so one os.replace publishes both at once: a reader sees the old
object or the new one, never a mix, and never half a body. Writers build the file under a temp name in
the same directory and rename it into place only after fsync.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from nst_daemon.errors import DiskFull, is_disk_full
from nst_daemon.fsutil import fsync_dir
from nst_daemon.store.keys import RESERVED_PREFIX

TEMP_PREFIX = RESERVED_PREFIX + "tmp-"
# A temp file whose writer may still be alive is kept this long before it is presumed abandoned.
STALE_TEMP_AGE_S = 24 * 3600
_MAGIC = b"NSO\x01"
# magic, body size, body MD5 digest, header length. Size and digest are patched in after the body is written.
_PREFIX = struct.Struct(">4sQ16sI")


class CorruptObject(ValueError):
    """A file in a bucket directory that is not a complete object written by this store."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str
    content_type: str
    metadata: dict[str, str]
    last_modified: datetime


def write_object(
    directory: Path, name: str, key: str, content_type: str, metadata: dict[str, str], chunks: Iterable[bytes]
) -> StoredObject:
    header = json.dumps(
        {"key": key, "content_type": content_type, "metadata": metadata}, separators=(",", ":")
    ).encode("utf-8")
    try:
        fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=directory)
    except OSError as exc:
        if is_disk_full(exc):  # no inode left
            raise DiskFull(f"{key}: {exc}") from exc
        raise
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_PREFIX.pack(_MAGIC, 0, bytes(16), len(header)))
            out.write(header)
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.seek(0)
            out.write(_PREFIX.pack(_MAGIC, size, digest.digest(), len(header)))
            out.flush()
            os.fsync(out.fileno())
            mtime = os.fstat(out.fileno()).st_mtime
        os.replace(temp, directory / name)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError) and not isinstance(exc, DiskFull) and is_disk_full(exc):
            # One typed error for every caller: intake refuses with its message, the worker waits.
            raise DiskFull(f"{key}: {exc}") from exc
        raise
    fsync_dir(directory)
    return StoredObject(key, size, f'"{digest.hexdigest()}"', content_type, metadata, _timestamp(mtime))


def open_object(path: Path) -> tuple[StoredObject, BinaryIO]:
    """The object's header and its file, positioned at the first body byte; the caller closes the file."""
    stream = open(path, "rb")  # noqa: SIM115 - handed to the caller, who owns closing it
    try:
        prefix = stream.read(_PREFIX.size)
        if len(prefix) != _PREFIX.size:
            raise CorruptObject(f"{path}: truncated")
        magic, size, md5, header_len = _PREFIX.unpack(prefix)
        if magic != _MAGIC:
            raise CorruptObject(f"{path}: not an object file")
        # fstat on the open descriptor: the name may already point at a newer object.
        stat = os.fstat(stream.fileno())
        if stat.st_size != _PREFIX.size + header_len + size:
            raise CorruptObject(f"{path}: size does not match its header")
        try:
            header = json.loads(stream.read(header_len))
            info = StoredObject(
                key=header["key"],
                size=size,
                etag=f'"{md5.hex()}"',
                content_type=header["content_type"],
                metadata=dict(header["metadata"]),
                last_modified=_timestamp(stat.st_mtime),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"{path}: bad header") from exc
    except BaseException:
        stream.close()
        raise
    return info, stream


def read_info(path: Path) -> StoredObject:
    info, stream = open_object(path)
    stream.close()
    return info


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Delete temp files left by writers that died before their rename; live writers' files are kept."""
    removed = []
    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if age > STALE_TEMP_AGE_S or not _writer_alive(entry.name):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue  # its writer renamed or removed it meanwhile
    return removed


def _writer_alive(name: str) -> bool:
    try:
        pid = int(name[len(TEMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True  # another client in this process may be mid-write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _timestamp(mtime: float) -> datetime:
    # S3 reports LastModified to the second.
    return datetime.fromtimestamp(int(mtime), UTC)
