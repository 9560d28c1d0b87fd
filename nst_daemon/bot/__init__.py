"""The Telegram bot: long polling that stores each update before confirming it (polling.py, intake.py),
aiogram 3 for the handling, conversation state in SQLite, results from the job queue.

    bot = BotService(settings, db, queue, token)
    await bot.start()                      # getMe (a refused token is one clear NstdError), wiring, commands
    task = asyncio.create_task(bot.run())  # long polling until stopped or cancelled; never dies on errors
    ...
    await bot.stop()                       # stop polling, flush status edits, close the session

The bot knows nothing of torch: it hands images to the JobQueue and gets results back through the
deliverer and the listener it registers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

# isort: off
# First, so that aiogram's several hundred types are built when first used, not all at import.
from nst_daemon.bot import lazy_types
# isort: on

import sqlite_utils
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramUnauthorizedError
from aiogram.fsm.storage.memory import SimpleEventIsolation
from aiogram.types import BotCommand
from aiogram.utils.token import TokenValidationError

from nst_daemon.bot import texts
from nst_daemon.bot.api_limits import ApiLimiter, ApiLimitMiddleware
from nst_daemon.bot.callbacks import AnswerCallbacksMiddleware
from nst_daemon.bot.context import Services
from nst_daemon.bot.delivery import TelegramDeliverer
from nst_daemon.bot.intake import IntakeLog, IntakeMiddleware
from nst_daemon.bot.pinned_responses import PinResponseTypes
from nst_daemon.bot.polling import DurablePoller
from nst_daemon.bot.ratelimit import RateLimiter
from nst_daemon.bot.retry import RetryMiddleware
from nst_daemon.bot.routers import all_routers
from nst_daemon.bot.routers.access import AccessMiddleware
from nst_daemon.bot.starter import JobStarter
from nst_daemon.bot.status_messages import JobProgress, StatusEditor
from nst_daemon.bot.storage import SQLiteStorage
from nst_daemon.config import Settings
from nst_daemon.db import is_allowed
from nst_daemon.errors import NstdError, describe_failure
from nst_daemon.jobs import JobQueue

__all__ = ["BotService"]

log = logging.getLogger(__name__)

POLLING_TIMEOUT_S = 20
RESTART_DELAY_S = 30.0
STOP_TIMEOUT_S = 5.0
UNAUTHORIZED = "Telegram refused the bot token (401 Unauthorized): check telegram.token / token_file"


class BotService:
    def __init__(
        self,
        settings: Settings,
        db: sqlite_utils.Database,
        queue: JobQueue,
        token: str,
        *,
        edit_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self._token = token
        self.bot: Bot | None = None
        self.storage = SQLiteStorage.for_database(db.conn)
        self.intake = IntakeLog(self.storage)
        # One pace for every Bot API call (api_limits.py); the status editor asks it before each edit.
        self.api_limiter = ApiLimiter()
        self.editor = (
            StatusEditor(limiter=self.api_limiter)
            if edit_interval_s is None
            else StatusEditor(edit_interval_s, limiter=self.api_limiter)
        )
        self.deliverer = TelegramDeliverer(self.editor)
        self.progress = JobProgress(queue, self.editor)
        limiter = RateLimiter(settings.telegram.rate_limit_per_minute)
        self.services = Services(
            settings=settings,
            db=db,
            queue=queue,
            storage=self.storage,
            limiter=limiter,
            editor=self.editor,
            progress=self.progress,
            starter=JobStarter(queue, limiter, lambda user_id: self.services.prefs(user_id)),
        )
        # SimpleEventIsolation serializes one user's updates (an album's photos arrive together and
        # must not overwrite each other's conversation data); different users still run concurrently.
        self.dp = Dispatcher(storage=self.storage, events_isolation=SimpleEventIsolation())
        self.dp["services"] = self.services
        # After the Dispatcher's own FSM middleware, so it runs inside the per-user lock (intake.py).
        self.dp.update.outer_middleware(IntakeMiddleware())
        access = AccessMiddleware(db, settings.telegram.allowed_users)
        # Registered first, so it wraps the access check too: strangers' button presses get answered.
        self.dp.callback_query.outer_middleware(AnswerCallbacksMiddleware())
        self.dp.message.outer_middleware(access)
        self.dp.callback_query.outer_middleware(access)
        self.dp.include_routers(*all_routers())
        self.poller: DurablePoller | None = None
        self._commands_set = False
        self._stopping = False

    async def start(self) -> None:
        """Check the token with getMe and wire the bot into the queue. Telegram being unreachable is
        not fatal (polling keeps trying); Telegram refusing the token is."""
        lazy_types.warm_up()
        session = AiohttpSession(api=TelegramAPIServer.from_base(self.settings.telegram.api_base))
        session.middleware(RetryMiddleware())
        # Inside the retries, so a retried call waits for its slot too.
        session.middleware(ApiLimitMiddleware(self.api_limiter))
        session.middleware(PinResponseTypes())
        try:
            self.bot = Bot(self._token, session=session)
        except TokenValidationError:
            await session.close()
            raise NstdError(
                "telegram.token is malformed: expected the form 123456:ABC... from @BotFather"
            ) from None
        try:
            me = await self.bot.get_me()
        except TelegramUnauthorizedError:
            await session.close()
            raise NstdError(UNAUTHORIZED) from None
        except Exception as exc:  # the network, a proxy, Telegram itself: polling will keep trying
            log.warning(
                "telegram: %s not reachable at start (%s); will keep trying",
                self.settings.telegram.api_base,
                describe_failure(exc),
            )
        else:
            log.info("telegram: logged in as @%s", me.username)
            await self._set_commands()
        self.editor.bot = self.bot
        self.deliverer.bot = self.bot
        self.queue.set_deliverer("telegram", self.deliverer)
        self.queue.add_listener(self.progress)
        self.queue.add_preview_listener(self.progress.preview)

    async def _set_commands(self) -> None:
        if self._commands_set or self.bot is None:
            return
        commands = [BotCommand(command=name, description=line) for name, line in texts.COMMANDS.items()]
        try:
            await self.bot.set_my_commands(commands)
            self._commands_set = True
        except Exception as exc:
            log.warning("telegram: setMyCommands failed (%s); will retry", describe_failure(exc))

    async def run(self) -> None:
        """Long-poll until stop() or cancellation. Errors are retried after a pause; never raises them."""
        if self.bot is None:
            raise RuntimeError("BotService.start() must be called before run()")
        self.poller = DurablePoller(
            self.dp,
            self.bot,
            self.intake,
            lambda user_id: is_allowed(self.services.db, user_id, self.settings.telegram.allowed_users),
            polling_timeout=POLLING_TIMEOUT_S,
        )
        while not self._stopping:
            await self._set_commands()
            try:
                await self.poller.run()
            except asyncio.CancelledError:
                # Let handlers already running finish their replies (bounded); any cut off stay pending
                # in the intake log and are handled again at the next start.
                await self.poller.wait_handlers(STOP_TIMEOUT_S)
                raise
            except Exception as exc:  # the intake log unreadable at the replay: try again later
                log.warning("telegram: polling stopped (%s); restarting", describe_failure(exc))
                await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        """Stop polling if it still runs, flush pending status edits, close the HTTP session and storage."""
        self._stopping = True
        if self.poller is not None:
            self.poller.stop()
            await self.poller.wait_handlers(STOP_TIMEOUT_S)
        await self.editor.drain(STOP_TIMEOUT_S)
        if self.bot is not None:
            with contextlib.suppress(TelegramAPIError, OSError):
                await self.bot.session.close()
        await self.storage.close()
