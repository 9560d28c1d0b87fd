"""Long polling that owns the getUpdates offset, so no update is confirmed before it is stored.

Why not aiogram's `start_polling`: it asks for the next batch (confirming the last one to Telegram) as
soon as it has started a task per update, before any handler ran; a crash then lost every photo not yet
a job row. Here each batch is first written to the intake log (intake.py), and only then is the next
getUpdates sent with the higher offset. aiogram still does all the handling: each stored update goes to
`Dispatcher.feed_update`, with its middlewares, filters, FSM and error handlers, in a task of its own
(SimpleEventIsolation keeps one user's updates in order). The poller also keeps its own set of running
handler tasks, so a stop waits for them without reading aiogram's private `_handle_update_tasks`.

An update whose handling finishes (replied to, also with an error) is marked done; one cut off by a
crash or a stop stays pending and is handled again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.methods import GetUpdates
from aiogram.types import Update

from nst_daemon.backoff import PATIENT
from nst_daemon.bot import texts
from nst_daemon.bot.intake import MAX_ATTEMPTS, IntakeLog, StoredUpdate, Ticket, current_ticket
from nst_daemon.errors import describe_failure

log = logging.getLogger(__name__)

# Telegram unreachable: getUpdates is tried again after these waits.
RETRY = PATIENT
PRUNE_EVERY_S = 3600.0


class DurablePoller:
    def __init__(
        self,
        dp: Dispatcher,
        bot: Bot,
        intake: IntakeLog,
        is_allowed: Callable[[int], bool],
        *,
        polling_timeout: int = 20,
    ) -> None:
        self.dp = dp
        self.bot = bot
        self.intake = intake
        self.is_allowed = is_allowed
        self.polling_timeout = polling_timeout
        self.tasks: set[asyncio.Task[None]] = set()
        self._handling: set[int] = set()  # update ids with a task in this process
        self._stop = asyncio.Event()
        self._offset: int | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Replay what an earlier run left unfinished, then poll until stop() or cancellation."""
        await self._replay()
        failures = 0
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            if loop.time() - last_prune > PRUNE_EVERY_S:
                last_prune = loop.time()
                with contextlib.suppress(Exception):
                    await self.intake.prune()
            try:
                updates = await self._get_updates()
                if updates is None:
                    break  # stopped while waiting
                if updates:
                    await self._take(updates)
                failures = 0
            except Exception as exc:
                # Telegram unreachable, or the database refused the batch: nothing was confirmed, so
                # the same updates come again on the next try.
                failures += 1
                delay = RETRY.delay(failures)
                log.warning("telegram: polling failed (%s); retrying in %.0f s", describe_failure(exc), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _get_updates(self) -> list[Update] | None:
        method = GetUpdates(
            offset=self._offset,
            timeout=self.polling_timeout,
            allowed_updates=self.dp.resolve_used_update_types(),
        )
        timeout = int((self.bot.session.timeout or 0) + self.polling_timeout)
        request = asyncio.ensure_future(self.bot(method, request_timeout=timeout))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({request, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not request.done():
                request.cancel()
        if self._stop.is_set() and not request.done():
            return None
        with contextlib.suppress(asyncio.CancelledError):
            return request.result()
        return None

    async def _take(self, updates: list[Update]) -> None:
        batch: list[tuple[int, int, dict[str, Any]]] = []
        strangers: set[int] = set()
        for update in updates:
            user_id = UserContextMiddleware.resolve_event_context(update).user_id
            if user_id is not None and self.is_allowed(user_id):
                batch.append((update.update_id, user_id, update.model_dump(mode="json", exclude_none=True)))
            else:
                strangers.add(update.update_id)  # refused (or ignored) at once: nothing of theirs to keep
        to_handle = await self.intake.store(batch) if batch else {}
        # Stored: from here on a crash loses nothing, so the next getUpdates may confirm them.
        self._offset = updates[-1].update_id + 1
        for update in updates:
            if update.update_id in strangers:
                self._spawn(self._handle_plain(update))
            elif (stored := to_handle.get(update.update_id)) and stored.update_id not in self._handling:
                self._handling.add(stored.update_id)
                self._spawn(self._handle(stored, update))

    async def _replay(self) -> None:
        for stored in await self.intake.unfinished():
            if stored.update_id in self._handling:
                continue
            log.info("telegram: update %s was cut off by a stop; handling it again", stored.update_id)
            update = Update.model_validate(stored.payload, context={"bot": self.bot})
            self._handling.add(stored.update_id)  # now, so the first poll's copy of it is not handled too
            self._spawn(self._handle(stored, update))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine, name="telegram update")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, stored: StoredUpdate, update: Update) -> None:
        try:
            if stored.attempts > MAX_ATTEMPTS:
                await self._give_up(stored, update)
                return
            ticket = Ticket(self.intake, stored)
            token = current_ticket.set(ticket)
            try:
                await self.dp.feed_update(self.bot, update)
                outcome = "replied to a failure"  # IntakeMiddleware marks a handled one done itself
            except Exception as exc:  # the error handlers replied where they could; never replay it
                log.warning("telegram: update %s failed: %s", stored.update_id, describe_failure(exc))
                outcome = f"error: {describe_failure(exc)}"
            finally:
                current_ticket.reset(token)
            if not ticket.finished:
                await self.intake.finish(stored.update_id, outcome)
        except Exception as exc:
            # Marking it done failed (the database): it stays pending and is handled again after a
            # restart, where the job lookup keeps a photo from becoming two jobs.
            log.warning("telegram: update %s: %s", stored.update_id, describe_failure(exc))
        finally:
            self._handling.discard(stored.update_id)

    async def _handle_plain(self, update: Update) -> None:
        try:
            await self.dp.feed_update(self.bot, update)
        except Exception as exc:
            log.warning("telegram: update %s failed: %s", update.update_id, describe_failure(exc))

    async def _give_up(self, stored: StoredUpdate, update: Update) -> None:
        log.warning(
            "telegram: update %s was cut off %d times; giving up on it", stored.update_id, stored.attempts - 1
        )
        chat_id = UserContextMiddleware.resolve_event_context(update).chat_id
        with contextlib.suppress(Exception):
            if chat_id is not None:
                await self.bot.send_message(chat_id=chat_id, text=texts.GAVE_UP)
        await self.intake.finish(stored.update_id, "gave up")

    async def wait_handlers(self, limit_s: float) -> None:
        """Let running handlers finish (bounded); the rest are cancelled and replayed at the next start."""
        running = [task for task in self.tasks if not task.done()]
        if not running:
            return
        _done, pending = await asyncio.wait(running, timeout=limit_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
