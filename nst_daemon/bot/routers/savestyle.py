"""Users' own styles: `/savestyle NAME` then style images (Save style or /done), or "Save as style…" in the
/nst flow then a name. The style is private to the user (named_styles' owner), runs with the engine and
strength the user has in /settings, and keeps the images' caption weights.

Refusals are one line: a name that shadows a built-in or shared style, a non-image, a missing model.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlite_utils
from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from nst_daemon import named_styles
from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.images import InputProblem, download
from nst_daemon.bot.states import Nst, SaveStyle
from nst_daemon.bot.style_images import collect, image_refs, weights_of, weights_text
from nst_daemon.db import file_of, open_connection
from nst_daemon.named_styles import StyleRefused

IMAGE = F.photo | F.document


async def savestyle(message: Message, command: CommandObject, state: FSMContext, services: Services) -> None:
    assert message.from_user is not None
    if not (command.args or "").strip():
        await message.answer(texts.SAVESTYLE_USAGE)
        return
    try:
        name = await _check_new(services, message.from_user.id, command.args or "")
    except StyleRefused as exc:
        await message.answer(texts.STYLE_REFUSED.format(reason=exc.message))
        return
    await state.set_state(SaveStyle.images)
    await state.set_data({"name": name, "styles": []})
    await message.answer(texts.SAVESTYLE_SEND_IMAGES.format(name=name))


async def _check_new(services: Services, user_id: int, text: str) -> str:
    """The name in its one spelling, once it is free for this user and the user's engine is installed."""
    name = named_styles.check_name(text)
    named_styles.check_free(services.db, name, str(user_id), force=False)
    prefs = await services.prefs(user_id)
    named_styles.check_models(services.settings, services.style_engine(prefs))
    return name


async def style_image(message: Message, state: FSMContext, bot: Bot) -> None:
    name = (await state.get_data()).get("name", "")

    def reply(styles: list[dict[str, Any]]) -> tuple[str, InlineKeyboardMarkup]:
        count = len(styles)
        text = texts.SAVESTYLE_GOT.format(
            count=count, s=texts.plural(count), weights=weights_text(styles), name=name
        )
        return text, keyboards.save_style_keyboard()

    await collect(message, state, bot, reply)


async def need_images(message: Message) -> None:
    await message.answer(texts.SAVESTYLE_NEED_IMAGE)


async def save(bot: Bot, state: FSMContext, services: Services, user_id: int, chat_id: int) -> None:
    if await state.get_state() != SaveStyle.images.state:
        await bot.send_message(chat_id=chat_id, text=texts.SAVESTYLE_NOT_IN_FLOW)
        return
    data = await state.get_data()
    await _save(bot, state, services, user_id, chat_id, data.get("name", ""), data.get("styles", []))


async def _save(
    bot: Bot,
    state: FSMContext,
    services: Services,
    user_id: int,
    chat_id: int,
    name: str,
    styles: list[dict[str, Any]],
) -> None:
    if not styles:
        await bot.send_message(chat_id=chat_id, text=texts.SAVESTYLE_NEED_IMAGE)
        return
    prefs = await services.prefs(user_id)
    engine = services.style_engine(prefs)
    try:
        images = []
        for index, ref in enumerate(image_refs(styles), start=1):
            data = await download(bot, ref)
            images.append((data, named_styles.check_image_bytes(data, services.settings, f"image {index}")))
        strength = prefs.strength if engine == "adain" and prefs.strength != 1.0 else None

        def add() -> named_styles.NamedStyle:
            # In a thread, as the images go to the object store (S3 in a cluster), with a connection of
            # its own, so its transaction never mixes with the event loop's use of services.db.
            db = sqlite_utils.Database(open_connection(file_of(services.db.conn)))
            try:
                return named_styles.add_images(
                    services.settings,
                    db,
                    services.queue.store,
                    name,
                    images,
                    engine=engine,
                    strength=strength,
                    weights=weights_of(styles),
                    owner=str(user_id),
                )
            finally:
                db.close()

        style = await asyncio.to_thread(add)
    except (StyleRefused, InputProblem) as exc:
        reason = exc.message if isinstance(exc, StyleRefused) else str(exc)
        await bot.send_message(chat_id=chat_id, text=texts.STYLE_REFUSED.format(reason=reason.rstrip(".")))
        return
    await state.clear()
    count = len(style.image_keys)
    text = texts.SAVED_STYLE.format(
        name=style.name, engine=texts.ENGINE_NAMES[style.engine], count=count, s=texts.plural(count)
    )
    await bot.send_message(chat_id=chat_id, text=text)


async def done(message: Message, state: FSMContext, services: Services, bot: Bot) -> None:
    assert message.from_user is not None
    await save(bot, state, services, message.from_user.id, message.chat.id)


async def save_button(
    query: CallbackQuery, state: FSMContext, services: Services, bot: Bot, answer: CallbackAnswer
) -> None:
    await answer()
    chat_id = query.message.chat.id if query.message else query.from_user.id
    await save(bot, state, services, query.from_user.id, chat_id)


async def save_as_style(query: CallbackQuery, state: FSMContext, bot: Bot, answer: CallbackAnswer) -> None:
    """ "Save as style…" in the /nst flow: its style images (and weights) wait for a name."""
    await answer()
    chat_id = query.message.chat.id if query.message else query.from_user.id
    if await state.get_state() != Nst.styles.state:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NOT_IN_FLOW)
        return
    styles = (await state.get_data()).get("styles", [])
    if not styles:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NEED_STYLE)
        return
    await state.set_state(SaveStyle.naming)
    await state.set_data({"styles": styles})
    await bot.send_message(chat_id=chat_id, text=texts.SAVESTYLE_ASK_NAME)


async def name_given(message: Message, state: FSMContext, services: Services, bot: Bot) -> None:
    assert message.from_user is not None and message.text is not None
    try:
        name = await _check_new(services, message.from_user.id, message.text)
    except StyleRefused as exc:
        await message.answer(texts.STYLE_REFUSED.format(reason=exc.message))
        return
    styles = (await state.get_data()).get("styles", [])
    await _save(bot, state, services, message.from_user.id, message.chat.id, name, styles)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="savestyle")
    feature.message.register(savestyle, Command("savestyle"))
    feature.message.register(done, Command("done"))
    feature.message.register(style_image, SaveStyle.images, IMAGE)
    feature.message.register(need_images, SaveStyle.images, F.text & ~F.text.startswith("/"))
    feature.message.register(name_given, SaveStyle.naming, F.text & ~F.text.startswith("/"))
    feature.callback_query.register(save_button, keyboards.SaveStyleNow.filter())
    feature.callback_query.register(save_as_style, keyboards.SaveAsStyle.filter())
    return feature
