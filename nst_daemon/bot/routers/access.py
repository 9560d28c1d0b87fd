"""Who may use the bot: telegram.allowed_users plus the `users` table (`nstd users add ID`).

An outer middleware, so a stranger's update is refused before any filter or handler runs: no download,
no job, no state. Each stranger is told once per process lifetime (their id and how the owner can allow
them); repeats are dropped silently, so spamming the bot gets one reply. Callback queries from strangers
are still answered (AnswerCallbacksMiddleware runs outside this one).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlite_utils
from aiogram import BaseMiddleware, Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import TelegramObject, User

from nst_daemon.bot import texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.db import is_allowed

log = logging.getLogger(__name__)

MAX_REMEMBERED = 10_000


class AccessMiddleware(BaseMiddleware):
    def __init__(self, db: sqlite_utils.Database, allowed_users: list[int]) -> None:
        self.db = db
        self.allowed_users = list(allowed_users)
        self.told: set[int] = set()

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None
        if is_allowed(self.db, user.id, self.allowed_users):
            return await handler(event, data)
        await self._refuse(event, user, data["bot"], data.get("answer"))
        return None

    async def _refuse(
        self, event: TelegramObject, user: User, bot: Bot, answer: CallbackAnswer | None
    ) -> None:
        try:
            if answer is not None:
                await answer(texts.NOT_ALLOWED_SHORT)
            if user.id in self.told:
                return
            if len(self.told) >= MAX_REMEMBERED:
                self.told.clear()
            self.told.add(user.id)
            log.info(
                "telegram: refused user %s (not allowed; `nstd users add %s` allows them)", user.id, user.id
            )
            await bot.send_message(chat_id=user.id, text=texts.NOT_ALLOWED.format(user_id=user.id))
        except TelegramAPIError as exc:
            log.warning("telegram: could not answer a stranger: %s", exc.message)
