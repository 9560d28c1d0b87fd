"""/start and /help."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

from nst_daemon.bot import texts
from nst_daemon.bot.context import Services
from nst_daemon.bot.routers.quick import known_style, style_buttons


async def start(message: Message, state: FSMContext, services: Services) -> None:
    current = await state.get_state()
    if current is not None:
        what = texts.FLOW_NAMES.get(current, "a conversation")
        await message.answer(texts.ALREADY_IN_FLOW.format(what=what))
        return
    assert message.from_user is not None
    user_id = message.from_user.id
    await message.answer(
        texts.welcome(_bot_default(services, user_id)), reply_markup=style_buttons(services, user_id)
    )


async def help_command(message: Message, services: Services) -> None:
    assert message.from_user is not None
    await message.answer(texts.help_text(_bot_default(services, message.from_user.id)))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="start")
    feature.message.register(start, CommandStart())
    feature.message.register(help_command, Command("help"))
    return feature


def _bot_default(services: Services, user_id: int) -> str:
    """The default style as the bot applies it: a built-in or a named style that exists ("" for none)."""
    default = services.settings.default_style
    return (known_style(services, default, user_id) or "") if default else ""
