"""A request middleware that keeps each API method's parsed-response type alive between calls.

aiogram parses every reply with `Response[method.__returning__]`, a pydantic generic model made on first
use. pydantic caches those in a weak-valued dict, and a model built inside a function (as aiogram's
`check_response` does) has no other owner, so the garbage collector frees it and the next call builds it
again: about 10 ms of the event loop's CPU each time. A profile of the daemon benchmark showed 1.5 such
rebuilds per job (`Response[Message]`, `Response[list[Update]]`, ...). Holding one reference per method
type the bot has used makes every later call a cache hit.

Measured again by scripts/bench_bot_internals.py (median of 20, after a gc.collect() each, on a 2-core
box at load ~10): making `Response[Message]` took 577 ms when the cache had let it go against 0.04 ms
pinned. `tests/test_bot_pinned_responses.py` fails if pydantic stops freeing the type (the pin is then
useless and can go) or the pin stops holding it.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response


class PinResponseTypes(BaseRequestMiddleware):
    def __init__(self) -> None:
        self.pinned: dict[type[TelegramMethod[Any]], type[Response[Any]]] = {}

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Response[Any]:
        kind = type(method)
        if kind not in self.pinned:
            self.pinned[kind] = Response[method.__returning__]
        return await make_request(bot, method)
