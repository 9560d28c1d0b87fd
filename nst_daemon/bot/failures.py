"""What the user is told when taking an image fails for a reason of the server's, not of the image.

One mapping for the two places that reply: JobStarter (which edits the image's "got it" message) and the
dispatcher's error handler (routers/errors.py), which catches whatever escapes a handler. Handlers do not
catch an NstdError to reply themselves: they let it escape to that handler.
"""

from __future__ import annotations

import errno
import sqlite3

from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter

from nst_daemon.bot import texts
from nst_daemon.bot.images import InputProblem
from nst_daemon.errors import NstdError


def failure_reason(exc: BaseException) -> str:
    """A short lower-case reason for a status message ("Monet: <reason>")."""
    if isinstance(exc, NstdError):
        return exc.message.rstrip(".")  # its text is meant for the user (disk full included)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return texts.OUT_OF_SPACE
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return texts.SERVER_BUSY
    if isinstance(exc, TelegramRetryAfter):
        return texts.TELEGRAM_FLOOD
    if isinstance(exc, TelegramAPIError):
        return texts.TELEGRAM_TROUBLE
    return texts.INTAKE_FAILED


def failure_reply(exc: BaseException) -> str:
    """The same reason as a message of its own; a message the bot cannot use as an image is answered
    with its own words ("Send a photo or an image file.")."""
    if isinstance(exc, InputProblem):
        return str(exc)
    reason = failure_reason(exc)
    return f"Sorry, that didn't go through: {reason}."


def expected(exc: BaseException) -> bool:
    """Whether the failure is one of the known kinds (logged in one line; others with a traceback)."""
    return isinstance(exc, (NstdError, OSError, sqlite3.Error, TelegramAPIError))
