"""/nst: a content photo, then one or more style images (albums count as several), then Stylize or /go.

Only file ids are kept in the conversation state, so a restart resumes at the same step and nothing is
downloaded until the job is submitted.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.images import ImageRef, image_ref
from nst_daemon.bot.states import Nst

MAX_STYLE_IMAGES = 8
IMAGE = F.photo | F.document


async def nst(message: Message, state: FSMContext) -> None:
    await state.set_state(Nst.content)
    await state.set_data({})
    await message.answer(texts.NST_START)


async def begin_with_content(message: Message, state: FSMContext, content: ImageRef) -> None:
    """Enter step 2 with a known content image (also used by the style buttons and 'nst' captions)."""
    await state.set_state(Nst.styles)
    await state.set_data({"content": content.to_dict(), "styles": []})
    await message.answer(texts.NST_GOT_CONTENT)


async def content_image(message: Message, state: FSMContext) -> None:
    ref = image_ref(message)  # an InputProblem is answered by the error handler (routers/errors.py)
    await begin_with_content(message, state, ref)


async def style_image(message: Message, state: FSMContext, bot: Bot) -> None:
    ref = image_ref(message)  # an InputProblem is answered by the error handler (routers/errors.py)
    data = await state.get_data()
    styles: list[dict[str, Any]] = data.get("styles", [])
    if len(styles) >= MAX_STYLE_IMAGES:
        await message.answer(texts.NST_TOO_MANY.format(limit=MAX_STYLE_IMAGES))
        return
    if all(item.get("file_id") != ref.file_id for item in styles):  # a replay after a crash adds it once
        styles.append(ref.to_dict())
    group = message.media_group_id
    same_album = bool(group) and group == data.get("group") and data.get("ack_id")
    # Remember the image before replying: a failed reply must not lose it.
    await state.update_data(styles=styles, group=group)
    text = texts.NST_GOT_STYLES.format(count=len(styles), s=texts.plural(len(styles)))
    if same_album:
        # One acknowledgement per album, updated as its photos arrive.
        try:
            await bot.edit_message_text(
                text=text,
                chat_id=message.chat.id,
                message_id=int(data["ack_id"]),
                reply_markup=keyboards.stylize_keyboard(),
            )
            return
        except TelegramBadRequest as exc:
            if "not modified" in exc.message:
                return
    ack = await message.answer(text, reply_markup=keyboards.stylize_keyboard())
    await state.update_data(ack_id=ack.message_id)


async def need_content(message: Message) -> None:
    await message.answer(texts.NST_NEED_CONTENT)


async def need_styles(message: Message) -> None:
    await message.answer(texts.NST_WAITING_STYLES)


async def stylize(bot: Bot, state: FSMContext, services: Services, user_id: int, chat_id: int) -> None:
    current = await state.get_state()
    if current == Nst.content.state:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NEED_CONTENT)
        return
    if current != Nst.styles.state:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NOT_IN_FLOW)
        return
    data = await state.get_data()
    styles = [ImageRef.from_dict(item) for item in data.get("styles", [])]
    if not styles or "content" not in data:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NEED_STYLE)
        return
    outcome = await services.starter.start(
        bot,
        user_id=user_id,
        chat_id=chat_id,
        engine="nst",
        content=ImageRef.from_dict(data["content"]),
        style_refs=styles,
    )
    if outcome.job is not None:
        await state.clear()
    elif outcome.problem == "image":
        index = outcome.image_index
        if index is None or index == 0:
            # The content (or an unknown image) is unusable: the flow cannot go on with it.
            await state.clear()
            await bot.send_message(chat_id=chat_id, text=texts.NST_BAD_CONTENT)
        else:
            del styles[index - 1]
            await state.update_data(styles=[ref.to_dict() for ref in styles])
            await bot.send_message(chat_id=chat_id, text=texts.NST_BAD_STYLE_DROPPED)
    # Busy, rate-limited or a transient failure: the flow stays as it is, ready for another try.


async def go(message: Message, state: FSMContext, services: Services, bot: Bot) -> None:
    assert message.from_user is not None
    await stylize(bot, state, services, message.from_user.id, message.chat.id)


async def go_button(
    query: CallbackQuery, state: FSMContext, services: Services, bot: Bot, answer: CallbackAnswer
) -> None:
    await answer()
    chat_id = query.message.chat.id if query.message else query.from_user.id
    await stylize(bot, state, services, query.from_user.id, chat_id)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="nst")
    feature.message.register(nst, Command("nst"))
    feature.message.register(content_image, Nst.content, IMAGE)
    feature.message.register(style_image, Nst.styles, IMAGE)
    feature.message.register(need_content, Nst.content, F.text & ~F.text.startswith("/"))
    feature.message.register(need_styles, Nst.styles, F.text & ~F.text.startswith("/"))
    feature.message.register(go, Command("go"))
    feature.callback_query.register(go_button, keyboards.Stylize.filter())
    return feature
