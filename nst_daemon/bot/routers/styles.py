"""/styles: each style with one line of description, and buttons to pick one."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.context import Services


async def styles(message: Message, services: Services) -> None:
    settings = services.settings
    await message.answer(texts.styles_text(settings), reply_markup=keyboards.styles_keyboard(settings))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="styles")
    feature.message.register(styles, Command("styles"))
    return feature
