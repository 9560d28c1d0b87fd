"""/settings: the NST preset, colour preservation, the live preview, Instant vs Painted for one's own style
images and the style strength, per user, switched with inline buttons."""

from __future__ import annotations

from aiogram import Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.user_settings import ENGINES, UserPrefs


def settings_text(prefs: UserPrefs, engine: str) -> str:
    return texts.SETTINGS.format(
        engine=texts.ENGINE_NAMES[engine],
        strength=round(prefs.strength * 100),
        preset=prefs.preset,
        colors="on" if prefs.preserve_colors else "off",
        preview="on" if prefs.preview else "off",
    )


def settings_keyboard(prefs: UserPrefs, engine: str) -> InlineKeyboardMarkup:
    return keyboards.settings_keyboard(
        prefs.preset, prefs.preserve_colors, prefs.preview, engine=engine, strength=prefs.strength
    )


async def show_settings(message: Message, services: Services) -> None:
    assert message.from_user is not None
    prefs = await services.prefs(message.from_user.id)
    engine = services.style_engine(prefs)
    await message.answer(settings_text(prefs, engine), reply_markup=settings_keyboard(prefs, engine))


async def _save_and_show(
    query: CallbackQuery, services: Services, prefs: UserPrefs, answer: CallbackAnswer
) -> None:
    await services.save_prefs(query.from_user.id, prefs)
    await answer(texts.SETTINGS_SAVED)
    if query.message is None or not hasattr(query.message, "edit_text"):
        return
    engine = services.style_engine(prefs)
    try:
        await query.message.edit_text(
            settings_text(prefs, engine), reply_markup=settings_keyboard(prefs, engine)
        )
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


async def set_engine(
    query: CallbackQuery, callback_data: keyboards.SetEngine, services: Services, answer: CallbackAnswer
) -> None:
    if callback_data.engine not in ENGINES:
        return
    prefs = await services.prefs(query.from_user.id)
    prefs.engine = callback_data.engine
    await _save_and_show(query, services, prefs, answer)


async def set_strength(
    query: CallbackQuery, callback_data: keyboards.SetStrength, services: Services, answer: CallbackAnswer
) -> None:
    if not 0 <= callback_data.percent <= 100:
        return
    prefs = await services.prefs(query.from_user.id)
    prefs.strength = callback_data.percent / 100
    await _save_and_show(query, services, prefs, answer)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="settings")
    feature.message.register(show_settings, Command("settings"))
    feature.callback_query.register(set_preset, keyboards.SetPreset.filter())
    feature.callback_query.register(set_colors, keyboards.SetColors.filter())
    feature.callback_query.register(set_preview, keyboards.SetPreview.filter())
    feature.callback_query.register(set_engine, keyboards.SetEngine.filter())
    feature.callback_query.register(set_strength, keyboards.SetStrength.filter())
    return feature
