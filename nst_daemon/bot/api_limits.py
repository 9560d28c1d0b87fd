"""One pace for every Bot API call: per chat and overall, like Telegram's own flood limits.

Telegram answers 429 (flood control) past about one message a second in a chat, with short bursts
allowed, and about 30 a second overall. Every request the bot makes passes this request middleware, so
no caller counts calls: a call that would go over waits here for its slot instead of earning a 429.

Results come first. Edits of status messages are the low-priority calls: they never take a chat's last
slot (one stays for a result), and they wait while a more urgent call to the same chat is waiting. The
status editor asks `delay()` before it edits and simply tries later, with the newest text, when the chat
is busy; that is how many state changes fold into one edit.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response

# Under Telegram's limits (1/s per chat with small bursts, 30/s overall) with a margin: a request's
# arrival time differs from its send time, and Telegram counts arrivals.
PER_CHAT_RATE = 1.0
PER_CHAT_BURST = 3.0
GLOBAL_RATE = 25.0
GLOBAL_BURST = 25.0
LOW_PRIORITY = ("editMessageText", "editMessageReplyMarkup", "editMessageCaption", "editMessageMedia")
RESERVED_FOR_URGENT = 1.0  # a chat slot an edit never takes
MAX_CHATS = 10_000  # idle buckets are dropped past this many


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float, need: float = 1.0) -> float:
        """Seconds until `need` tokens are there (0: now)."""
        self.refill(now)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    @property
    def full(self) -> bool:
        return self.tokens >= self.burst


class ApiLimiter:
    def __init__(
        self,
        per_chat_rate: float = PER_CHAT_RATE,
        per_chat_burst: float = PER_CHAT_BURST,
        global_rate: float = GLOBAL_RATE,
        global_burst: float = GLOBAL_BURST,
    ) -> None:
        self.per_chat_rate = per_chat_rate
        self.per_chat_burst = per_chat_burst
        now = time.monotonic()
        self._global = _Bucket(global_rate, global_burst, global_burst, now)
        self._chats: dict[int, _Bucket] = {}
        self._urgent_waiting: defaultdict[int, int] = defaultdict(int)

    def _chat(self, chat_id: int, now: float) -> _Bucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if len(self._chats) >= MAX_CHATS:
                for key in [key for key, old in self._chats.items() if old.wait(now) == 0 and old.full]:
                    del self._chats[key]
            bucket = self._chats[chat_id] = _Bucket(
                self.per_chat_rate, self.per_chat_burst, self.per_chat_burst, now
            )
        return bucket

    def delay(self, chat_id: int | None, *, low: bool = False) -> float:
        """Seconds before a call to this chat could go now (0: at once); takes nothing."""
        now = time.monotonic()
        wait = self._global.wait(now)
        if chat_id is not None:
            need = 1.0 + (RESERVED_FOR_URGENT if low else 0.0)
            wait = max(wait, self._chat(chat_id, now).wait(now, need))
            if low and self._urgent_waiting.get(chat_id):
                wait = max(wait, 1.0 / self.per_chat_rate)
        return wait

    async def acquire(self, chat_id: int | None, *, low: bool = False) -> None:
        """Wait for a slot and take it."""
        urgent = chat_id is not None and not low
        if urgent:
            self._urgent_waiting[chat_id] += 1
        try:
            # Polling the buckets is right here: a slot opens with time, not with an event.
            while (wait := self.delay(chat_id, low=low)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            # No await between the check above and here: the slot is still free.
            self._global.tokens -= 1
            if chat_id is not None:
                self._chats[chat_id].tokens -= 1
        finally:
            if urgent:
                self._urgent_waiting[chat_id] -= 1
                if not self._urgent_waiting[chat_id]:
                    del self._urgent_waiting[chat_id]


def chat_of(method: TelegramMethod[Any]) -> int | None:
    """The numeric chat a call goes to (a channel's @name counts only towards the overall limit)."""
    chat_id = getattr(method, "chat_id", None)
    return chat_id if isinstance(chat_id, int) else None


class ApiLimitMiddleware(BaseRequestMiddleware):
    def __init__(self, limiter: ApiLimiter) -> None:
        self.limiter = limiter

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Response[Any]:
        if not isinstance(method, GetUpdates):  # long polling is not a message
            await self.limiter.acquire(chat_of(method), low=method.__api_method__ in LOW_PRIORITY)
        return await make_request(bot, method)
