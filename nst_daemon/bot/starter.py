"""From image references to a queued job: rate limit, status message, downloads, submission.

Every failure on the way is shown in the job's status message (or a reply), and reported back to the
caller as an Outcome, so a flow can decide whether its conversation state survives the failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from nst_daemon import named_styles
from nst_daemon.bot import texts
from nst_daemon.bot.failures import failure_reason
from nst_daemon.bot.images import ImageRef, InputProblem, download
from nst_daemon.bot.intake import current_ticket
from nst_daemon.bot.ratelimit import RateLimiter
from nst_daemon.bot.user_settings import UserPrefs
from nst_daemon.errors import describe_failure
from nst_daemon.imaging import ImageError
from nst_daemon.jobs import Job, JobQueue, JobRequest, QueueFull, UserBusy
from nst_daemon.named_styles import NamedStyle, StyleRefused
from nst_daemon.style_catalog import job_label

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    job: Job | None = None
    problem: str = ""  # rate | input | busy | image | error
    image_index: int | None = None  # for "image": 0 = the content, N = style image N


class JobStarter:
    def __init__(
        self, queue: JobQueue, limiter: RateLimiter, prefs: Callable[[int], Awaitable[UserPrefs]]
    ) -> None:
        self.queue = queue
        self.limiter = limiter
        self.prefs = prefs

    async def start(
        self,
        bot: Bot,
        *,
        user_id: int,
        chat_id: int,
        engine: str,
        content: ImageRef,
        style: str | None = None,
        style_refs: list[ImageRef] | None = None,
        reply_to: int | None = None,
        named: NamedStyle | None = None,
        params: dict[str, Any] | None = None,
    ) -> Outcome:
        """`named`: a named style's images (from the object store), engine, strength and weights, instead
        of `style`/`style_refs`. `params` go over the user's /settings (a /nst job's `style_weights`)."""
        wait = self.limiter.check(user_id)
        if wait:
            await bot.send_message(
                chat_id=chat_id, text=texts.SLOW_DOWN.format(limit=self.limiter.per_minute, wait=round(wait))
            )
            return Outcome(problem="rate")
        style_refs = style_refs or []
        if named is not None:
            engine = named.engine
        label = job_label(
            engine,
            [style] if style else [],
            len(style_refs),
            self.queue.settings,
            named.name if named else None,
        )
        ticket = current_ticket.get()
        key = ticket.key(content.file_id) if ticket else None
        if ticket and key and ticket.update.replay:
            # Handled before a crash: the image may already be a job, and its "got it" message exists.
            done = self.queue.job_for_intake(key)
            if done is not None:
                log.info("telegram: update %s is job %s already", ticket.update.update_id, done.id)
                return Outcome(job=done)

        async def status_message() -> int:
            known = ticket.status_message(key) if ticket and key else None
            if known is not None:
                return known
            sent = await bot.send_message(chat_id=chat_id, text=texts.STATUS_RECEIVED.format(label=label))
            if ticket and key:
                try:
                    await ticket.remember_status(key, sent.message_id)
                except Exception as exc:  # only a replay needs it; the message itself must not be left
                    log.warning("telegram: could not record a status message: %s", describe_failure(exc))
            return sent.message_id

        # The status message and the downloads go out together: one Bot API round trip less before the
        # job is queued. The message is awaited before anything refers to it.
        sending = asyncio.ensure_future(status_message())
        problem = ""
        try:
            content_bytes = await download(bot, content)
            style_bytes = [await download(bot, ref) for ref in style_refs]
            if named is not None:
                style_bytes = await asyncio.to_thread(
                    named_styles.load_images, self.queue.settings, self.queue.store, named
                )
        except InputProblem as exc:
            problem = str(exc)
        except StyleRefused as exc:
            problem = exc.message
        except BaseException:
            sending.cancel()
            raise
        # Failing here (Telegram refused the "got it" message) leaves nothing to edit: the dispatcher's
        # error handler replies instead.
        status_id = await sending

        async def fail(text: str, outcome: Outcome) -> Outcome:
            await self._edit(bot, chat_id, status_id, f"{label}: {text}")
            return outcome

        if problem:
            return await fail(problem, Outcome(problem="input"))
        try:
            prefs = await self.prefs(user_id)
            job_params = {**prefs.params(), **(params or {})}
            if named is not None:
                # The style's record decides: its strength (none: the engine's default) and weights.
                job_params.pop("strength", None)
                job_params.update(named.params)
            request = JobRequest(
                source="telegram",
                owner=str(user_id),
                engine=engine,
                content=content_bytes,
                styles=[named.name] if named else [style] if style else [],
                style_images=style_bytes,
                params=job_params,
                reply={
                    "chat_id": chat_id,
                    "user_id": user_id,
                    "status_message_id": status_id,
                    "message_id": reply_to,
                    **({"intake": key} if key else {}),
                },
            )
            job = await self.queue.submit(request)
        except (QueueFull, UserBusy) as exc:
            return await fail(texts.BUSY.format(reason=exc.message), Outcome(problem="busy"))
        except ImageError as exc:
            text = exc.reason[:1].upper() + exc.reason[1:]
            return await fail(text, Outcome(problem="image", image_index=exc.image_index))
        except Exception as exc:
            # Anything else (a full disk, a locked database, a bug): the "got it" message says so, and
            # never stays "preparing…".
            log.warning("telegram: could not queue an image of user %s: %s", user_id, describe_failure(exc))
            return await fail(failure_reason(exc), Outcome(problem="error"))
        return Outcome(job=job)

    @staticmethod
    async def _edit(bot: Bot, chat_id: int, message_id: int, text: str) -> None:
        try:
            await bot.edit_message_text(text=text, chat_id=chat_id, message_id=message_id)
        except TelegramAPIError as exc:
            log.warning("telegram: could not show a failure in the status message: %s", exc.message)
            await bot.send_message(chat_id=chat_id, text=text)
