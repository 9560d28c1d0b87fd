"""Every callback query gets exactly one answerCallbackQuery, whatever happens in its handler.

An outer middleware puts an `answer` callable into the handler data; handlers call `await answer(text)`
as early as they like (before slow work, so the button's spinner stops at once), and the middleware
answers any query nobody answered, also when no handler matched or a handler raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, TelegramObject

log = logging.getLogger(__name__)


class CallbackAnswer:
    def __init__(self, query: CallbackQuery) -> None:
        self.query = query
        self.answered = False

    async def __call__(self, text: str | None = None, show_alert: bool = False) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            await self.query.answer(text=text, show_alert=show_alert)
        except TelegramAPIError as exc:
            # An old query (the bot was down when it was pressed) can no longer be answered.
            log.info("telegram: could not answer a callback query: %s", exc.message)


class AnswerCallbacksMiddleware(BaseMiddleware):
    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, CallbackQuery):
            return await handler(event, data)
        answer = data["answer"] = CallbackAnswer(event)
        try:
            return await handler(event, data)
        finally:
            await answer()
