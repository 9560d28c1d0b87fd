"""A request middleware that rides out Telegram's flood control and short network blips.

Every API call the bot makes (replies, edits, result uploads) goes through it, so no handler has to
think about 429s. The retry budget is bounded: a delivery that still fails raises, and the job queue
retries it later with backoff; a handler reply that still fails is logged by aiogram and polling goes on.
getUpdates is left alone: aiogram's polling loop already backs off on every error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import (
    ClientDecodeError,
    RestartingTelegram,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import Response

from nst_daemon.backoff import Backoff
from nst_daemon.errors import describe_failure

log = logging.getLogger(__name__)

# Transient failures: the network, a 5xx, or a proxy's HTML error page instead of JSON.
TRANSIENT = (TelegramNetworkError, TelegramServerError, RestartingTelegram, ClientDecodeError)


class RetryMiddleware(BaseRequestMiddleware):
    def __init__(
        self,
        flood_retries: int = 5,
        # A longer wait is left to the job queue's redelivery: a delivery runs inside the queue's worker,
        # so sleeping here holds up the next job.
        max_retry_after: float = 10.0,
        network_retries: int = 2,
        network_backoff: Backoff = Backoff((0.5, 1.5)),
    ) -> None:
        self.flood_retries = flood_retries
        self.max_retry_after = max_retry_after
        self.network_retries = network_retries
        self.network_backoff = network_backoff

    async def __call__(
        self, make_request: NextRequestMiddlewareType[Any], bot: Bot, method: TelegramMethod[Any]
    ) -> Response[Any]:
        if isinstance(method, GetUpdates):
            return await make_request(bot, method)
        floods = failures = 0
        name = method.__api_method__
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                floods += 1
                if floods > self.flood_retries or exc.retry_after > self.max_retry_after:
                    raise
                log.warning("telegram %s: flood control, retrying in %s s", name, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except TRANSIENT as exc:
                failures += 1
                if failures > self.network_retries:
                    raise
                delay = self.network_backoff.delay(failures)
                log.warning("telegram %s: %s; retrying in %.1f s", name, describe_failure(exc), delay)
                await asyncio.sleep(delay)
