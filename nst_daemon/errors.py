"""Errors that carry a message a person can act on; the CLI prints them as one line."""

from __future__ import annotations


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
