"""Inline keyboards and their callback data."""

from __future__ import annotations

from collections.abc import Sequence

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from nst_daemon.bot import texts
from nst_daemon.bot.user_settings import STRENGTHS
from nst_daemon.config import Settings
from nst_daemon.style_catalog import pretrained_styles

NST = "nst"  # the "Multi-style NST" choice among the style buttons


class StyleChoice(CallbackData, prefix="style"):
    style: str  # a pretrained style (the catalog's) or NST


class Stylize(CallbackData, prefix="go"):
    """The /nst flow's button before Instant vs Painted: the user's remembered engine."""


class RunWith(CallbackData, prefix="run"):
    engine: str  # adain (Instant) | nst (Painted); remembered in /settings


class SaveAsStyle(CallbackData, prefix="saveas"):
    """Save the /nst flow's style images as the user's own style (asks for a name)."""


class SaveStyleNow(CallbackData, prefix="savestyle"):
    """Save the images sent after /savestyle NAME."""


class SetEngine(CallbackData, prefix="engine"):
    engine: str


class SetStrength(CallbackData, prefix="strength"):
    percent: int


class CancelJob(CallbackData, prefix="cancel"):
    job: int


class SetPreset(CallbackData, prefix="preset"):
    preset: str


class SetColors(CallbackData, prefix="colors"):
    on: bool


class SetPreview(CallbackData, prefix="preview"):
    on: bool


def styles_keyboard(settings: Settings | None = None, named: Sequence[str] = ()) -> InlineKeyboardMarkup:
    """Reference order: Multi-style NST first, then the catalog's pretrained styles, then named styles,
    two a row."""
    buttons = [
        InlineKeyboardButton(text=style.label, callback_data=StyleChoice(style=style.key).pack())
        for style in pretrained_styles(settings).values()
    ]
    buttons += [
        InlineKeyboardButton(text=name, callback_data=StyleChoice(style=name).pack()) for name in named
    ]
    rows = [[InlineKeyboardButton(text=texts.NST_NAME, callback_data=StyleChoice(style=NST).pack())]]
    rows += [buttons[index : index + 2] for index in range(0, len(buttons), 2)]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def stylize_keyboard(engine: str = "") -> InlineKeyboardMarkup:
    """Instant or Painted (the remembered one ticked), and saving the style images under a name."""
    run = [
        InlineKeyboardButton(
            text=("✓ " if name == engine else "") + texts.ENGINE_NAMES[name],
            callback_data=RunWith(engine=name).pack(),
        )
        for name in texts.ENGINE_NAMES
    ]
    save = InlineKeyboardButton(text=texts.SAVE_AS_STYLE_BUTTON, callback_data=SaveAsStyle().pack())
    return InlineKeyboardMarkup(inline_keyboard=[run, [save]])


def save_style_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Save style", callback_data=SaveStyleNow().pack())]]
    )


def cancel_job_keyboard(job_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=texts.CANCEL_BUTTON, callback_data=CancelJob(job=job_id).pack())]
        ]
    )


def settings_keyboard(
    preset: str, preserve_colors: bool, preview: bool = True, engine: str = "", strength: float = 1.0
) -> InlineKeyboardMarkup:
    presets = [
        InlineKeyboardButton(
            text=("✓ " if name == preset else "") + name, callback_data=SetPreset(preset=name).pack()
        )
        for name in texts.PRESETS
    ]
    colors = InlineKeyboardButton(
        text=f"Preserve colours: {'on' if preserve_colors else 'off'} (tap to switch)",
        callback_data=SetColors(on=not preserve_colors).pack(),
    )
    live = InlineKeyboardButton(
        text=f"Live preview: {'on' if preview else 'off'} (tap to switch)",
        callback_data=SetPreview(on=not preview).pack(),
    )
    engines = [
        InlineKeyboardButton(
            text=("✓ " if name == engine else "") + texts.ENGINE_NAMES[name],
            callback_data=SetEngine(engine=name).pack(),
        )
        for name in texts.ENGINE_NAMES
    ]
    strengths = [
        InlineKeyboardButton(
            text=("✓ " if abs(value - strength) < 1e-9 else "") + f"{round(value * 100)}%",
            callback_data=SetStrength(percent=round(value * 100)).pack(),
        )
        for value in STRENGTHS
    ]
    return InlineKeyboardMarkup(inline_keyboard=[presets, [colors], [live], engines, strengths])
