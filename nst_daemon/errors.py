"""Errors that carry a message a person can act on; the CLI prints them as one line."""

from __future__ import annotations

import errno


class NstdError(Exception):
    """Base for every error whose message is meant for the user, not a traceback."""

    exit_code: int = 1

    @property
    def message(self) -> str:
        return str(self)


class ModelNotInstalled(NstdError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name} is not installed: run `nstd models pull {name}`")
        self.name = name


class UnknownStyle(NstdError):
    def __init__(self, style: str, known: list[str] | tuple[str, ...]) -> None:
        super().__init__(f"unknown style {style!r}; choose one of: {', '.join(known)}")
        self.style = style


class Cancelled(NstdError):
    """Raised by an engine when its cancel event is set; shared so the queue need not import torch."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


def describe_failure(exc: BaseException) -> str:
    """Any exception in one line: its type and the first line of its message, so a log or an error says
    why (a refused connection, a proxy, a corrupt file), not only that something failed. A bot token in
    it never reaches a log: the log redacts it."""
    text = str(getattr(exc, "message", "") or exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


DISK_FULL_MESSAGE = "the server is out of disk space; try again later"


class DiskFull(NstdError, OSError):
    """The store or the database ran out of space (ENOSPC, EDQUOT). An OSError still, so code that
    handles I/O errors keeps doing so; an NstdError, so the user reads one line instead of a traceback.
    Not fatal: intake refuses with it and the worker waits, both until space returns."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(errno.ENOSPC, DISK_FULL_MESSAGE)
        self.detail = detail

    def __str__(self) -> str:
        return DISK_FULL_MESSAGE


# What running out of space looks like on each backend: an errno here, an S3 error code (MinIO's, and
# the WebDAV-style 507) on a remote store, and SQLite's own message.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_S3_CODES = frozenset({"XMinioStorageFull", "InsufficientStorage", "507"})


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if type(exc).__name__ == "OperationalError" and "disk is full" in str(exc):  # sqlite3
        return True
    response = getattr(exc, "response", None)  # botocore's ClientError, without importing botocore here
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) in DISK_FULL_S3_CODES
    return False


class ClusterUnavailable(NstdError):
    """The engines' cluster cannot be reached (cluster.backend = "ray"): jobs wait queued, none fails."""
