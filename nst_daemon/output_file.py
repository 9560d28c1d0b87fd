"""Writing a result where the user asked, without ever destroying one of their files.

One rule for `nstd stylize -o` and `nstd jobs export -o`: the output is never one of the inputs (also not
through a symbolic or a hard link: the inode decides), an existing file is replaced only with `--force`,
and `-o` naming a folder writes a file of a derived name into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from nst_daemon.errors import NstdError
from nst_daemon.fsutil import fsync_dir, write_temporary


def resolve_output(output: Path, default_name: str) -> Path:
    """`output`, or `output / default_name` when `output` is an existing folder; its folder must exist."""
    if output.is_dir():
        return output / default_name
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise NstdError(f"cannot write {output}: directory {parent} does not exist")
    if not output.suffix and not os.path.lexists(output):
        # Likely a folder meant to exist ("results/" reaches us as "results"): say both readings.
        raise NstdError(
            f"cannot write {output}: there is no folder of that name, and an output file needs a .jpg, "
            ".jpeg or .png extension"
        )
    return output


def check_output(output: Path, *, inputs: Iterable[Path] = (), force: bool = False) -> None:
    """Refuse an output that is one of `inputs` (always), or that exists (unless `force`)."""
    try:
        target = os.stat(output)
    except FileNotFoundError:
        target = None
    except OSError as exc:
        raise NstdError(f"cannot write {output}: {exc.strerror or exc}") from None
    if target is not None:
        for path in inputs:
            with contextlib.suppress(OSError):
                source = os.stat(path)
                if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino):
                    raise NstdError(
                        f"refusing to write {output}: it is the input {path}; choose another output file"
                    )
    if os.path.isdir(output):
        raise NstdError(f"cannot write {output}: it is a directory")
    if not force and os.path.lexists(output):
        raise _exists(output)


def write_output(output: Path, data: bytes, *, force: bool = False) -> None:
    """Write `data` to `output` atomically. Without `force` a file that appeared since `check_output` is
    still not replaced: the finished file is hard-linked into place, which fails if the name is taken."""
    try:
        tmp = write_temporary(output.parent, data, prefix=f".{output.name}.")
    except OSError as exc:
        raise NstdError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        if force:
            os.replace(tmp, output)
        else:
            _link_or_create(tmp, output, data)
    except FileExistsError:
        raise _exists(output) from None
    except OSError as exc:
        raise NstdError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(output.parent)


def _link_or_create(tmp: Path, output: Path, data: bytes) -> None:
    """Put the finished `tmp` at `output` unless the name is taken (FileExistsError). A file system without
    hard links (FAT on a USB stick, some network mounts) gets an exclusive create instead: not atomic, but
    it still never replaces a file."""
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        with open(output, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def _exists(output: Path) -> NstdError:
    return NstdError(f"{output} already exists; choose another output file or add --force to replace it")
