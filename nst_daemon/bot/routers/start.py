"""/start and /help."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.context import Services
from nst_daemon.style_catalog import style_keys


async def start(message: Message, state: FSMContext, services: Services) -> None:
    current = await state.get_state()
    if current is not None:
        what = texts.FLOW_NAMES.get(current, "a conversation")
        await message.answer(texts.ALREADY_IN_FLOW.format(what=what))
        return
    await message.answer(
        texts.welcome(_bot_default(services)), reply_markup=keyboards.styles_keyboard(services.settings)
    )


async def help_command(message: Message, services: Services) -> None:
    await message.answer(texts.help_text(_bot_default(services)))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="start")
    feature.message.register(start, CommandStart())
    feature.message.register(help_command, Command("help"))
    return feature


def _bot_default(services: Services) -> str:
    """The default style as the bot applies it: a named style serves the folder and the CLI only so far."""
    default = services.settings.default_style
    return default if default in style_keys(services.settings) else ""
