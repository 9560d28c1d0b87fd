"""Handing finished jobs back to their chats: the result, or why there is none.

The job queue calls the deliverer once per finished job and records the outcome in the database: a
raised exception means "try again later" (Telegram unreachable), PermanentDeliveryError means "never"
(the user blocked the bot). The result is sent in one message (photo or document, captioned), so a
retry can never leave half a delivery behind; the status message's final edit comes after it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramEntityTooLarge, TelegramForbiddenError
from aiogram.types import BufferedInputFile, ReplyParameters
from PIL import Image

from nst_daemon.bot import texts
from nst_daemon.bot.status_messages import StatusEditor, device_text, job_label, job_seconds, status_text
from nst_daemon.engines.preview import preview_jpeg
from nst_daemon.jobs import Job, PermanentDeliveryError
from nst_daemon.style_catalog import file_label

log = logging.getLogger(__name__)

PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES = 10_000  # width + height
PHOTO_MAX_RATIO = 20
_MODEL_MISSING = re.compile(r"model (\S+) is not installed")


def fits_photo(data: bytes) -> bool:
    """Whether Telegram takes these bytes as a photo; otherwise they go as a document."""
    if len(data) > PHOTO_MAX_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        return False
    return width + height <= PHOTO_MAX_SIDES and max(width, height) <= PHOTO_MAX_RATIO * min(width, height)


def failure_text(job: Job) -> str:
    error = job.error or "unknown error"
    if match := _MODEL_MISSING.search(error):
        return texts.JOB_MODEL_MISSING.format(label=job_label(job), model=match.group(1))
    if error == "failed repeatedly":
        return texts.JOB_FAILED_REPEATEDLY
    return texts.JOB_FAILED.format(error=error.rstrip("."))


def result_caption(job: Job) -> str:
    return texts.RESULT_CAPTION.format(
        label=job_label(job),
        seconds=texts.seconds_text(job_seconds(job)),
        device=device_text(job),
    )


class TelegramDeliverer:
    def __init__(self, editor: StatusEditor) -> None:
        self.editor = editor
        self.bot: Bot | None = None
        self._in_flight: dict[int, asyncio.Future[None]] = {}

    async def __call__(self, job: Job, result: bytes | None) -> None:
        # The queue's redelivery pass can pick up a job whose first delivery is still riding out flood
        # control; sending twice would duplicate the result, so the second call shares the first's outcome.
        running = self._in_flight.get(job.id)
        if running is not None:
            await asyncio.shield(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[job.id] = future
        try:
            await self._deliver(job, result)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(None)
        finally:
            del self._in_flight[job.id]

    async def _deliver(self, job: Job, result: bytes | None) -> None:
        if self.bot is None:
            raise RuntimeError("the Telegram bot is not started")
        chat_id = int(job.reply["chat_id"])
        picture: bytes | None = None
        try:
            if job.state == "done":
                if result is None:
                    raise RuntimeError(f"job {job.id} is done but its result is missing")
                await self._send_result(job, chat_id, result)
                picture = await self._final_picture(job, result)
            elif job.state == "failed":
                await self.bot.send_message(chat_id=chat_id, text=failure_text(job), **self._reply_to(job))
            elif job.started_at is not None:
                # A running job stops a moment after /cancel: say when it has. A queued one was
                # cancelled on the spot, and /cancel's own reply (or the button's toast) said so.
                await self.bot.send_message(
                    chat_id=chat_id, text=texts.JOB_CANCELLED.format(job=job.id), **self._reply_to(job)
                )
        except TelegramForbiddenError as exc:
            self._final_status(job)
            raise PermanentDeliveryError(f"chat {chat_id}: {exc.message}") from None
        except TelegramBadRequest as exc:
            # A 400 will not change by retrying (chat not found, bad request): give up on this one.
            self._final_status(job)
            raise PermanentDeliveryError(f"chat {chat_id}: {exc.message}") from None
        self._final_status(job, picture)
        log.info("job %s delivered to telegram chat %s (%s)", job.id, chat_id, job.state)

    async def _send_result(self, job: Job, chat_id: int, result: bytes) -> None:
        assert self.bot is not None
        name = f"nstd-{job.id}-{file_label(job.engine, job.styles)}.jpg"
        caption = result_caption(job)
        if fits_photo(result):
            try:
                await self.bot.send_photo(
                    chat_id=chat_id,
                    photo=BufferedInputFile(result, filename=name),
                    caption=caption,
                    **self._reply_to(job),
                )
                return
            except (TelegramBadRequest, TelegramEntityTooLarge) as exc:
                # Telegram's own photo checks are stricter than the documented limits for some images.
                log.info("job %s: photo refused (%s); sending as a document", job.id, exc.message)
        await self.bot.send_document(
            chat_id=chat_id,
            document=BufferedInputFile(result, filename=name),
            caption=caption,
            **self._reply_to(job),
        )

    @staticmethod
    def _reply_to(job: Job) -> dict[str, ReplyParameters]:
        message_id = job.reply.get("message_id")
        if not message_id:
            return {}
        return {
            "reply_parameters": ReplyParameters(message_id=int(message_id), allow_sending_without_reply=True)
        }

    async def _final_picture(self, job: Job, result: bytes) -> bytes | None:
        """A photo status (one that showed a live preview) ends showing the finished picture, small."""
        status_id = job.reply.get("status_message_id")
        if not status_id or not self.editor.is_photo(int(job.reply["chat_id"]), int(status_id)):
            return None
        try:
            with Image.open(io.BytesIO(result)) as image:
                return await asyncio.to_thread(preview_jpeg, image.copy())
        except Exception as exc:  # the result itself went out; the status keeps the last frame
            log.warning("job %s: no final picture for the status: %s", job.id, exc)
            return None

    def _final_status(self, job: Job, picture: bytes | None = None) -> None:
        status_id = job.reply.get("status_message_id")
        if status_id:
            self.editor.update(
                int(job.reply["chat_id"]), int(status_id), status_text(job, None), final=True, preview=picture
            )
