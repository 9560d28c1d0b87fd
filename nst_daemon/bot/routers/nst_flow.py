"""/nst: a content photo, then one or more style images (albums count as several), then Instant (AdaIN) or
Painted (Gatys NST), or /go for the one the user chose last (/settings; by default what `nstd stylize`
picks on this machine). A style image's caption may give its weight in the blend ("2", "x2").

Only file ids are kept in the conversation state, so a restart resumes at the same step and nothing is
downloaded until the job is submitted.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot, F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.images import ImageRef, image_ref
from nst_daemon.bot.states import Nst
from nst_daemon.bot.style_images import collect, image_refs, weights_of, weights_text

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


async def style_image(message: Message, state: FSMContext, bot: Bot, services: Services) -> None:
    assert message.from_user is not None
    prefs = await services.prefs(message.from_user.id)
    keyboard = keyboards.stylize_keyboard(services.style_engine(prefs))

    def reply(styles: list[dict[str, Any]]) -> tuple[str, InlineKeyboardMarkup]:
        count = len(styles)
        text = texts.NST_GOT_STYLES.format(count=count, s=texts.plural(count), weights=weights_text(styles))
        return text, keyboard

    await collect(message, state, bot, reply)


async def need_content(message: Message) -> None:
    await message.answer(texts.NST_NEED_CONTENT)


async def need_styles(message: Message) -> None:
    await message.answer(texts.NST_WAITING_STYLES)


async def stylize(
    bot: Bot, state: FSMContext, services: Services, user_id: int, chat_id: int, engine: str = ""
) -> None:
    """Run the flow's job with `engine` (adain | nst), or with the user's remembered one."""
    current = await state.get_state()
    if current == Nst.content.state:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NEED_CONTENT)
        return
    if current != Nst.styles.state:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NOT_IN_FLOW)
        return
    data = await state.get_data()
    items: list[dict[str, Any]] = data.get("styles", [])
    styles = image_refs(items)
    if not styles or "content" not in data:
        await bot.send_message(chat_id=chat_id, text=texts.NST_NEED_STYLE)
        return
    prefs = await services.prefs(user_id)
    if engine and engine != prefs.engine:
        prefs.engine = engine  # the choice made here is the one /settings shows and /go uses next time
        await services.save_prefs(user_id, prefs)
    weights = weights_of(items)
    outcome = await services.starter.start(
        bot,
        user_id=user_id,
        chat_id=chat_id,
        engine=engine or services.style_engine(prefs),
        content=ImageRef.from_dict(data["content"]),
        style_refs=styles,
        params={"style_weights": weights} if weights else None,
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
            del items[index - 1]
            await state.update_data(styles=items)
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


async def run_with(
    query: CallbackQuery,
    callback_data: keyboards.RunWith,
    state: FSMContext,
    services: Services,
    bot: Bot,
    answer: CallbackAnswer,
) -> None:
    await answer()
    if callback_data.engine not in texts.ENGINE_NAMES:
        return
    chat_id = query.message.chat.id if query.message else query.from_user.id
    await stylize(bot, state, services, query.from_user.id, chat_id, callback_data.engine)


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
    feature.callback_query.register(run_with, keyboards.RunWith.filter())
    return feature
