"""Quick paths: a photo captioned with a style (built-in or named) is stylized at once; an uncaptioned one
gets the default style, or style buttons. A style button pressed first makes the next photo use that style.

Albums: Telegram sends each photo of an album as its own message, with the caption on the first only,
so the album's style (or its pending question) is remembered by media_group_id in the conversation data.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.images import ImageRef, image_ref
from nst_daemon.bot.routers.nst_flow import begin_with_content
from nst_daemon.bot.states import Nst, Quick
from nst_daemon.style_catalog import engine_for_style, style_keys

IMAGE = F.photo | F.document
NST_CAPTIONS = ("nst", "multistylenst", "multistyle")


async def submit(message: Message, bot: Bot, services: Services, style: str, ref: ImageRef) -> None:
    assert message.from_user is not None
    await start_style(bot, services, message.from_user.id, message.chat.id, style, ref, message.message_id)


async def start_style(
    bot: Bot,
    services: Services,
    user_id: int,
    chat_id: int,
    style: str,
    ref: ImageRef,
    reply_to: int | None = None,
) -> None:
    """A built-in style's job, or a named style's (looked up now: one added since works at once, one
    removed since is refused in one line)."""
    builtin = style in style_keys(services.settings)
    named = None if builtin else services.named_style(style, user_id)
    if not builtin and named is None:
        text = texts.UNKNOWN_STYLE.format(style=style, styles=styles_inline(services, user_id))
        await bot.send_message(chat_id=chat_id, text=text)
        return
    await services.starter.start(
        bot,
        user_id=user_id,
        chat_id=chat_id,
        engine=engine_for_style(style, services.settings) or "cyclegan",
        style=style,
        content=ref,
        reply_to=reply_to,
        named=named,
    )


def known_style(services: Services, text: str, user_id: int) -> str | None:
    """The style `text` names for this user (a built-in or a named style), in its one spelling."""
    style = texts.normalize_style(text)
    if style in style_keys(services.settings):
        return style
    named = services.named_style(style, user_id)
    return named.name if named else None


def style_buttons(services: Services, user_id: int) -> Any:
    return keyboards.styles_keyboard(
        services.settings, [style.name for style in services.named_styles(user_id)]
    )


async def _remember_album(
    state: FSMContext,
    group: str | None,
    style: str,
    known: tuple[str | None, dict[str, Any]] | None = None,
) -> None:
    """Leave any question behind and remember the album's style; `known` is the (state, data) just read."""
    wanted = {"album_group": group, "album_style": style} if group else {}
    if known == (None, wanted):
        return  # the usual captioned photo: nothing would change, and each write is a thread hop and a commit
    await state.set_state(None)
    await state.set_data(wanted)


async def photo(
    message: Message, state: FSMContext, raw_state: str | None, bot: Bot, services: Services
) -> None:
    ref = image_ref(message)  # an InputProblem is answered by the error handler (routers/errors.py)
    current = raw_state  # read by aiogram's FSM middleware for this update; no second read
    data: dict[str, Any] = await state.get_data()
    group = message.media_group_id

    if group and group == data.get("album_group") and not message.caption:
        if data.get("album_skip"):
            return  # the album's caption was refused once already; one reply per album
        if data.get("album_style"):
            await submit(message, bot, services, data["album_style"], ref)
            return
        if current == Quick.choosing_style.state:
            await _add_to_question(message, state, bot, services, data, ref)
            return

    assert message.from_user is not None
    user_id = message.from_user.id
    style: str | None = None
    if message.caption:
        if texts.normalize_style(message.caption) in NST_CAPTIONS:
            await begin_with_content(message, state, ref)
            return
        style = known_style(services, message.caption, user_id)
        if style is None:
            shown = message.caption.strip()[:40]
            if group:
                await state.set_state(None)
                await state.set_data({"album_group": group, "album_skip": True})
            await message.answer(
                texts.UNKNOWN_STYLE.format(style=shown, styles=styles_inline(services, user_id))
            )
            return
    elif current == Quick.waiting_photo.state:
        style = data.get("style")
    elif services.settings.default_style:
        # A built-in or a named style; one removed since asks with buttons rather than failing the job.
        style = known_style(services, services.settings.default_style, user_id)

    if style is None:
        await state.set_state(Quick.choosing_style)
        await state.set_data({"photos": [ref.to_dict()], "album_group": group})
        ask = await message.answer(texts.CHOOSE_STYLE, reply_markup=style_buttons(services, user_id))
        await state.update_data(ask_id=ask.message_id)
        return
    await _remember_album(state, group, style, known=(current, data))
    await submit(message, bot, services, style, ref)


def styles_inline(services: Services, user_id: int) -> str:
    named = [style.name for style in services.named_styles(user_id)]
    return ", ".join([texts.styles_inline(services.settings), *named])


async def _add_to_question(
    message: Message, state: FSMContext, bot: Bot, services: Services, data: dict[str, Any], ref: ImageRef
) -> None:
    photos = [*data.get("photos", []), ref.to_dict()]
    await state.update_data(photos=photos)
    if data.get("ask_id"):
        # On failure the question still stands with its old wording.
        with contextlib.suppress(TelegramAPIError):
            await bot.edit_message_text(
                text=texts.CHOOSE_STYLE_ALBUM.format(count=len(photos)),
                chat_id=message.chat.id,
                message_id=int(data["ask_id"]),
                reply_markup=style_buttons(services, message.from_user.id if message.from_user else 0),
            )


async def choose_style(
    query: CallbackQuery,
    callback_data: keyboards.StyleChoice,
    state: FSMContext,
    bot: Bot,
    services: Services,
    answer: CallbackAnswer,
) -> None:
    user_id = query.from_user.id
    style = (
        callback_data.style
        if callback_data.style == keyboards.NST
        else known_style(services, callback_data.style, user_id)
    )
    if style is None:  # a named style removed since the buttons were sent
        styles = styles_inline(services, user_id)
        await answer(texts.UNKNOWN_STYLE.format(style=callback_data.style, styles=styles))
        return
    await answer()
    message = query.message if isinstance(query.message, Message) else None
    chat_id = message.chat.id if message else query.from_user.id
    current = await state.get_state()
    data = await state.get_data()
    pending = [ImageRef.from_dict(item) for item in data.get("photos", [])]
    name = texts.NST_NAME if style == keyboards.NST else texts.style_name(style, services.settings)

    if current == Quick.choosing_style.state and pending:
        if message is not None and message.message_id == data.get("ask_id"):
            # Cosmetic: should it fail, the buttons stay and pressing them again is harmless.
            with contextlib.suppress(TelegramAPIError):
                await message.edit_text(texts.CHOSEN.format(style=name))
        if style == keyboards.NST:
            await state.set_state(Nst.styles)
            await state.set_data({"content": pending[0].to_dict(), "styles": []})
            await bot.send_message(chat_id=chat_id, text=texts.NST_GOT_CONTENT)
            return
        # The photos become jobs before the question is forgotten: a crash in between replays this
        # press with the photos still there (intake.py), and the ones already queued are not queued twice.
        for ref in pending:
            await start_style(bot, services, user_id, chat_id, style, ref)
        await _remember_album(state, data.get("album_group"), style)
        return

    if style == keyboards.NST:
        await state.set_state(Nst.content)
        await state.set_data({})
        await bot.send_message(chat_id=chat_id, text=texts.NST_START)
        return
    await state.set_state(Quick.waiting_photo)
    await state.set_data({"style": style})
    await bot.send_message(chat_id=chat_id, text=texts.STYLE_CHOSEN_SEND_PHOTO.format(style=name))


async def press_a_button(message: Message) -> None:
    await message.answer(texts.PRESS_A_BUTTON)


async def send_a_photo(message: Message, state: FSMContext) -> None:
    style = (await state.get_data()).get("style", "")
    await message.answer(texts.SEND_PHOTO_FOR_STYLE.format(style=texts.style_name(style)))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="quick")
    feature.message.register(photo, StateFilter(None, Quick.choosing_style, Quick.waiting_photo), IMAGE)
    feature.callback_query.register(choose_style, keyboards.StyleChoice.filter())
    feature.message.register(press_a_button, Quick.choosing_style, F.text & ~F.text.startswith("/"))
    feature.message.register(send_a_photo, Quick.waiting_photo, F.text & ~F.text.startswith("/"))
    return feature
