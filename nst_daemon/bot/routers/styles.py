"""/styles: each style with one line of description (built-in and named), and buttons to pick one."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from nst_daemon.bot import texts
from nst_daemon.bot.context import Services
from nst_daemon.bot.routers.quick import style_buttons


async def styles(message: Message, services: Services) -> None:
    assert message.from_user is not None
    user_id = message.from_user.id
    named = [(style.name, style.engine) for style in services.named_styles(user_id)]
    await message.answer(texts.styles_text(named), reply_markup=style_buttons(services, user_id))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="styles")
    feature.message.register(styles, Command("styles"))
    return feature
