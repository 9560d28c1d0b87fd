"""Crash-safe file writes: a temporary file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from nst_daemon.errors import NstdError


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks (model files are hundreds of MB)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            hasher.update(chunk)
    return hasher.hexdigest()


def ensure_dir(path: Path, what: str) -> Path:
    """Create `path` (and its parents); a failure is a one-line NstdError naming `what` (say, the config
    key), since it is almost always a path in the config that points somewhere unusable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NstdError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    return path


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable; without it a power cut can roll the directory entry back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temporary(folder: Path, data: bytes, *, prefix: str, private: bool = False) -> Path:
    """`data` in a new, fsynced temporary file of `folder` (`prefix`...`.tmp`), for the caller to rename or
    link into place; removed again if writing fails.

    mkstemp creates files with mode 0600; results and models are no secret, so unless `private` is set
    the file gets the mode an ordinary open() would give it under the current umask.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temporary(path.parent, data, prefix=f".{path.name}.", private=private)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
