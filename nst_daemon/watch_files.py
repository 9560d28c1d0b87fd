"""Files of the watched folder: reading what strangers drop there, and putting files where none is replaced.

Anyone who can write in inbox/ chooses what the daemon opens, so a dropped file is opened once, without
following a link and without waiting on a pipe, and every check is made on the opened descriptor: a name
swapped between a check and the read cannot slip past it. Results and moved originals never replace a
file already there, and names are cut to the file system's limit, in bytes, keeping their ending.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from itertools import count
from pathlib import Path

from nst_daemon.errors import NstdError
from nst_daemon.fsutil import fsync_dir, write_temporary

# O_NOFOLLOW: a link is refused (ELOOP), not followed anywhere on the machine. O_NONBLOCK: a FIFO opens
# at once instead of waiting forever for a writer (fstat then refuses it); on a regular file it does
# nothing.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DEFAULT_NAME_MAX = 255
# An ending longer than this is no file type ("x.<200 characters>"): it is cut like the rest of the name.
MAX_KEPT_SUFFIX_BYTES = 16
_MB = 1024 * 1024

# Deliveries run in threads. Choosing a free name and taking it is one step under this lock wherever
# hard links (which take a name atomically) are unavailable.
_placing = threading.Lock()


# The folders that take every image in styles/ as the style: Gatys NST (painted) and AdaIN (instant).
STYLE_IMAGE_ENGINES = {"nst": "nst", "instant": "adain"}
ERROR_SUFFIX = ".error.txt"  # failed/<style>/<name>.error.txt: why <name> failed


def log_label(folder: str, name: str) -> str:
    """A dropped file's name for the log: quoted, so a name with a newline cannot forge a line."""
    return repr(f"{folder}/{name}" if folder else name)


class RefusedFile(NstdError):
    """A dropped file that is not read; the message is the reason written next to it in failed/."""


def read_dropped_file(
    path: Path, max_bytes: int, *, beneath: Path | None = None, limit_key: str = "images.max_bytes"
) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`, else `RefusedFile`.

    The size comes from fstat of the opened file, so a huge (or sparse) file is refused before a byte
    of it is read. With `beneath`, the folders between it and the file are not followed either: an
    inbox/monet/ swapped for a link to another folder cannot lead the read out of the inbox.
    FileNotFoundError passes through: a file that went away needs no reason.
    """
    try:
        fd = _open_beneath(path, beneath)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RefusedFile(_open_refusal(exc)) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile("not a regular file")
        if info.st_size > max_bytes:
            raise RefusedFile(too_large(info.st_size, max_bytes, limit_key))
        try:
            # Ask for one byte more than fstat said: a file that grew since is read to the limit at most.
            data = file.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += file.read(max_bytes + 1 - len(data))
        except OSError as exc:
            raise RefusedFile(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise RefusedFile(too_large(len(data), max_bytes, limit_key))
    return data


@contextlib.contextmanager
def parent_folder(path: Path, beneath: Path | None) -> Iterator[tuple[int | None, str]]:
    """`path` as (descriptor of its folder, name in it), for the *at() calls. With `beneath`, the
    folders from there to the file are opened one at a time without following a link, so a folder
    swapped for a link meanwhile cannot send a read or a move outside. Without it: (None, path)."""
    if beneath is None:
        yield None, str(path)
        return
    *folders, name = path.relative_to(beneath).parts
    dir_fd = os.open(beneath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            try:
                next_fd = os.open(folder, DIR_FLAGS, dir_fd=dir_fd)
            except NotADirectoryError:
                # Linux says ENOTDIR for a link too (O_DIRECTORY wins); tell them apart for the reason.
                if stat.S_ISLNK(os.stat(folder, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, "a folder on the way is a symbolic link") from None
                raise
            os.close(dir_fd)
            dir_fd = next_fd
        yield dir_fd, name
    finally:
        os.close(dir_fd)


def _open_beneath(path: Path, beneath: Path | None) -> int:
    with parent_folder(path, beneath) as (dir_fd, name):
        return os.open(name, OPEN_FLAGS, dir_fd=dir_fd)


def _open_refusal(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.EMLINK):  # Linux says ELOOP for O_NOFOLLOW on a link, BSDs EMLINK
        return "symbolic links are not followed; copy the file into the folder instead"
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):  # a socket, a device without driver
        return "not a regular file"
    return f"cannot read it: {exc.strerror or exc}"


def too_large(size: int, limit: int, limit_key: str) -> str:
    return f"file is {size / _MB:.1f} MB; the limit is {_megabytes(limit)} MB ({limit_key})"


def _megabytes(size: int) -> str:
    return f"{size / _MB:.1f}".removesuffix(".0")


def printable(text: str) -> str:
    """`text` for a log line: control characters escaped (a newline becomes \\n), so text from a file
    name cannot start a forged line; letters of every script stay as they are."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# --- names --------------------------------------------------------------------------------------------


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that `folder`'s file system takes (255 on most)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def split_name(name: str) -> tuple[str, str]:
    """`name` as (stem, suffix); an ending too long to be a file type stays in the stem."""
    suffix = Path(name).suffix
    if not suffix or len(os.fsencode(suffix)) > MAX_KEPT_SUFFIX_BYTES:
        return name, ""
    return name[: -len(suffix)], suffix


def fit_name(stem: str, tail: str, limit: int) -> str:
    """`stem + tail`, with the stem cut at a character boundary so that the name takes at most `limit`
    bytes on disk (a UTF-8 character is 1 to 4 bytes; an undecodable byte is one character here)."""
    room = limit - len(os.fsencode(tail))
    if room < 1:
        raise ValueError(f"no room for a name ending in {tail!r} within {limit} bytes")
    while len(os.fsencode(stem)) > room:
        # Cut about as many characters as there are bytes too many, at least one; a character is
        # never split, so the result is still valid UTF-8.
        excess = len(os.fsencode(stem)) - room
        stem = stem[: -max(1, excess // 4)]
    return stem + tail


def candidate_names(stem: str, tail: str, limit: int) -> Iterator[str]:
    """`stem+tail`, then `stem-1+tail`, `stem-2+tail`, ...: each within `limit` bytes. A cut stem gets
    its number after the cut, so two long names with a common start still end up distinct."""
    yield fit_name(stem, tail, limit)
    for number in count(1):
        yield fit_name(stem, f"-{number}{tail}", limit)


# --- placing files without replacing any ---------------------------------------------------------------


def write_new(folder: Path, stem: str, tail: str, data: bytes) -> Path:
    """Write `data` as a new file in `folder` named from `stem` and `tail` (see `candidate_names`) and
    return its path. A reader never sees half of it, and no existing file is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _write_temporary(folder, data)
    try:
        target = _take_name(tmp, folder, candidate_names(stem, tail, name_max(folder)))
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return target


def stage(staged: Path, data: bytes) -> None:
    """Write `data`, complete and synced, as `staged` (a hidden name of the caller's: one per job), for
    `publish`. A stale one is replaced by a rename, never rewritten in place: it may be linked to a
    result the user already has."""
    staged.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_write_temporary(staged.parent, data), staged)


def publish(staged: Path, stem: str, tail: str) -> Path:
    """Give the staged file a free name from `stem` and `tail` and return it. It is a hard link, so the
    staged name stays until `unstage`: an attempt that stops in between can still tell which file it
    made (`find_published`). Where hard links are unavailable it is a rename."""
    target = _take_name(
        staged, staged.parent, candidate_names(stem, tail, name_max(staged.parent)), keep=True
    )
    fsync_dir(staged.parent)
    return target


def find_published(staged: Path) -> Path | None:
    """The file an earlier `publish` of `staged` made, if it got that far: the one with its inode."""
    try:
        info = os.lstat(staged)
    except FileNotFoundError:
        return None
    if info.st_nlink < 2:
        return None
    with os.scandir(staged.parent) as entries:
        for entry in entries:
            if entry.path != str(staged) and os.path.samestat(entry.stat(follow_symlinks=False), info):
                return Path(entry.path)
    return None


def unstage(staged: Path) -> None:
    staged.unlink(missing_ok=True)


def _write_temporary(folder: Path, data: bytes) -> Path:
    # A short temporary name: the final name may already take the whole NAME_MAX.
    return write_temporary(folder, data, prefix=".nstd-")


def move_new(source: Path, folder: Path, *, beneath: Path | None = None, reserve_suffix: str = "") -> Path:
    """Move `source` (a file, a link or anything else, never followed) into `folder` under its own name,
    numbered and cut to fit as needed, and return where it went. `beneath` as for `read_dropped_file`:
    no folder on the way from there is followed if it became a link. With `reserve_suffix`, the name is
    chosen so that `name + reserve_suffix` is free and fits too (the reason file next to it in failed/)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = split_name(source.name)
    limit = name_max(folder) - len(os.fsencode(reserve_suffix))
    names = candidate_names(stem, suffix, limit)
    if reserve_suffix:
        names = (name for name in names if not os.path.lexists(folder / f"{name}{reserve_suffix}"))
    with parent_folder(source, beneath) as (dir_fd, name):
        return _take_name(name, folder, names, src_dir_fd=dir_fd)


def _take_name(
    source: str | Path,
    folder: Path,
    names: Iterator[str],
    *,
    src_dir_fd: int | None = None,
    keep: bool = False,
) -> Path:
    """Give `source` (relative to `src_dir_fd` when given) the first of `names` that is free in `folder`;
    `source` itself goes away unless `keep` (and links work).

    A hard link takes a name only if it is free, atomically, so not even another process can be
    overwritten. Where links are unavailable (some file systems; a directory; protected_hardlinks), a
    rename under `_placing` does it: nothing else in the daemon writes these folders meanwhile.
    """
    with _placing:
        for name in names:
            target = folder / name
            try:
                os.link(source, target, src_dir_fd=src_dir_fd, follow_symlinks=False)
            except FileExistsError:
                if _same_file(source, src_dir_fd, target):  # linked by an attempt that stopped there
                    break
                continue
            except FileNotFoundError:
                raise
            except OSError:
                if os.path.lexists(target):
                    continue
                os.rename(source, target, src_dir_fd=src_dir_fd)
                return target
            break
        if not keep:
            os.unlink(source, dir_fd=src_dir_fd)
        return target


def _same_file(source: str | Path, src_dir_fd: int | None, target: Path) -> bool:
    try:
        return os.path.samestat(os.stat(source, dir_fd=src_dir_fd, follow_symlinks=False), os.lstat(target))
    except OSError:
        return False
