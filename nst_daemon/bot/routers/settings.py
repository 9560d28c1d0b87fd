"""/settings: the NST preset, colour preservation and the live preview, per user, switched with inline
buttons."""

from __future__ import annotations

from aiogram import Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.user_settings import UserPrefs


def settings_text(prefs: UserPrefs) -> str:
    return texts.SETTINGS.format(
        preset=prefs.preset,
        colors="on" if prefs.preserve_colors else "off",
        preview="on" if prefs.preview else "off",
    )


def settings_keyboard(prefs: UserPrefs) -> InlineKeyboardMarkup:
    return keyboards.settings_keyboard(prefs.preset, prefs.preserve_colors, prefs.preview)


async def show_settings(message: Message, services: Services) -> None:
    assert message.from_user is not None
    prefs = await services.prefs(message.from_user.id)
    await message.answer(settings_text(prefs), reply_markup=settings_keyboard(prefs))


async def _save_and_show(
    query: CallbackQuery, services: Services, prefs: UserPrefs, answer: CallbackAnswer
) -> None:
    await services.save_prefs(query.from_user.id, prefs)
    await answer(texts.SETTINGS_SAVED)
    if query.message is None or not hasattr(query.message, "edit_text"):
        return
    try:
        await query.message.edit_text(settings_text(prefs), reply_markup=settings_keyboard(prefs))
    except TelegramBadRequest as exc:
        if "not modified" not in exc.message:
            raise


async def set_preset(
    query: CallbackQuery, callback_data: keyboards.SetPreset, services: Services, answer: CallbackAnswer
) -> None:
    if callback_data.preset not in texts.PRESETS:
        return
    prefs = await services.prefs(query.from_user.id)
    prefs.preset = callback_data.preset
    await _save_and_show(query, services, prefs, answer)


async def set_colors(
    query: CallbackQuery, callback_data: keyboards.SetColors, services: Services, answer: CallbackAnswer
) -> None:
    prefs = await services.prefs(query.from_user.id)
    prefs.preserve_colors = callback_data.on
    await _save_and_show(query, services, prefs, answer)


async def set_preview(
    query: CallbackQuery, callback_data: keyboards.SetPreview, services: Services, answer: CallbackAnswer
) -> None:
    prefs = await services.prefs(query.from_user.id)
    prefs.preview = callback_data.on
    await _save_and_show(query, services, prefs, answer)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="settings")
    feature.message.register(show_settings, Command("settings"))
    feature.callback_query.register(set_preset, keyboards.SetPreset.filter())
    feature.callback_query.register(set_colors, keyboards.SetColors.filter())
    feature.callback_query.register(set_preview, keyboards.SetPreview.filter())
    return feature
