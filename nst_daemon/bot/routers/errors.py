"""The catch-all: whatever escapes a handler gets a short reply, never silence.

JobStarter answers the failures it can see in the image's own status message; this handler covers the
rest: the "got it" message itself refused (flood control), the conversation storage locked, a full disk
while a flow saves its state, a bug. The reply comes from bot/failures.py, so an NstdError's text (disk
full: "the server is out of disk space; try again later") is what the user reads.
"""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.filters import ExceptionTypeFilter
from aiogram.types import ErrorEvent

from nst_daemon.bot.failures import expected, failure_reply
from nst_daemon.bot.images import InputProblem
from nst_daemon.errors import describe_failure

log = logging.getLogger(__name__)


async def reply_to_failure(event: ErrorEvent, bot: Bot) -> None:
    exc = event.exception
    update_id = event.update.update_id
    if isinstance(exc, InputProblem):  # the user's mistake, answered in its own words: not the server's
        log.info("telegram: update %s: %s", update_id, exc)
    elif expected(exc):
        log.warning("telegram: update %s failed: %s", update_id, describe_failure(exc))
    else:
        log.error("telegram: update %s failed: %s", update_id, describe_failure(exc), exc_info=exc)
    context = UserContextMiddleware.resolve_event_context(event.update)
    chat_id = context.chat_id or context.user_id
    if chat_id is None:
        return
    try:
        await bot.send_message(chat_id=chat_id, text=failure_reply(exc))
    except Exception as reply_exc:  # Telegram itself is the trouble: the log is all that is left
        log.warning(
            "telegram: could not tell chat %s about a failure: %s", chat_id, describe_failure(reply_exc)
        )


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="errors")
    feature.errors.register(reply_to_failure, ExceptionTypeFilter(Exception))
    return feature
