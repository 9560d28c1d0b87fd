"""/styles: each style with one line of description (built-in and named) and buttons to pick one, then the
style sheet: one picture of a sample photo in every style (style_sheet.py), kept in the object store under
a key that changes with the set of styles, so it is drawn once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram import Bot, Router
from aiogram.filters import Command
from aiogram.types import BufferedInputFile, Message

from nst_daemon import imaging, style_sheet
from nst_daemon.bot import texts
from nst_daemon.bot.context import Services
from nst_daemon.bot.routers.quick import style_buttons
from nst_daemon.errors import Cancelled, describe_failure
from nst_daemon.store import get_bytes, is_not_found

log = logging.getLogger(__name__)

SHEET_PREFIX = "sheets/"
SAMPLE_PHOTO = style_sheet.sample_photo()
# Sheets being sent, kept referenced until done (the event loop holds tasks only weakly).
_sending: set[asyncio.Task[None]] = set()


async def styles(message: Message, services: Services, bot: Bot) -> None:
    assert message.from_user is not None
    user_id = message.from_user.id
    named = [(style.name, style.engine) for style in services.named_styles(user_id)]
    await message.answer(
        texts.styles_text(services.settings, named), reply_markup=style_buttons(services, user_id)
    )
    # Drawing a sheet runs the engines, which a painted job may hold for minutes. This handler holds the
    # user's event-isolation lock, so the sheet is sent from a task of its own: the user's next message
    # (a Cancel button, a photo) is answered meanwhile.
    task = asyncio.create_task(send_style_sheet(services, bot, message.chat.id, user_id), name="style sheet")
    _sending.add(task)
    task.add_done_callback(_sending.discard)


async def send_style_sheet(services: Services, bot: Bot, chat_id: int, user_id: int) -> None:
    try:
        sheet = await style_sheet_jpeg(services, user_id)
        if sheet is not None:
            photo = BufferedInputFile(sheet, filename="styles.jpg")
            await bot.send_photo(chat_id=chat_id, photo=photo, caption=texts.STYLE_SHEET_CAPTION)
    except Cancelled:
        log.info("telegram: the style sheet for user %s was stopped with the daemon", user_id)
    except Exception as exc:  # the list and the buttons are there; the picture is a bonus
        log.warning("telegram: no style sheet for user %s: %s", user_id, describe_failure(exc))
        with contextlib.suppress(Exception):
            await bot.send_message(chat_id=chat_id, text=texts.NO_STYLE_SHEET)


async def style_sheet_jpeg(services: Services, user_id: int) -> bytes | None:
    """The sheet of the styles this user can pick, from the store, or drawn (through the engines) and
    stored; None when there is no style to show."""
    settings, store, bucket = services.settings, services.queue.store, services.settings.store.bucket
    available = style_sheet.available(settings, services.db, str(user_id))
    if not available:
        return None
    key = f"{SHEET_PREFIX}{style_sheet.cache_key(available, SAMPLE_PHOTO)}.jpg"
    try:
        return await asyncio.to_thread(get_bytes, store, bucket, key)
    except Exception as exc:
        if not is_not_found(exc):
            raise

    def draw() -> bytes:
        queue = services.queue
        sheet = style_sheet.build(
            settings, queue.runner, store, SAMPLE_PHOTO, available, keep_going=lambda: queue.accepting
        )
        data = imaging.encode_image(sheet, "jpeg")
        store.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg")
        return data

    return await asyncio.to_thread(draw)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="styles")
    feature.message.register(styles, Command("styles"))
    return feature
