"""Inline keyboards and their callback data."""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from nst_daemon.bot import texts
from nst_daemon.config import Settings
from nst_daemon.style_catalog import pretrained_styles

NST = "nst"  # the "Multi-style NST" choice among the style buttons


class StyleChoice(CallbackData, prefix="style"):
    style: str  # a pretrained style (the catalog's) or NST


class Stylize(CallbackData, prefix="go"):
    pass


class CancelJob(CallbackData, prefix="cancel"):
    job: int


class SetPreset(CallbackData, prefix="preset"):
    preset: str


class SetColors(CallbackData, prefix="colors"):
    on: bool


class SetPreview(CallbackData, prefix="preview"):
    on: bool


def styles_keyboard(settings: Settings | None = None) -> InlineKeyboardMarkup:
    """Reference order: Multi-style NST first, then the catalog's pretrained styles, two a row."""
    buttons = [
        InlineKeyboardButton(text=style.label, callback_data=StyleChoice(style=style.key).pack())
        for style in pretrained_styles(settings).values()
    ]
    rows = [[InlineKeyboardButton(text=texts.NST_NAME, callback_data=StyleChoice(style=NST).pack())]]
    rows += [buttons[index : index + 2] for index in range(0, len(buttons), 2)]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def stylize_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Stylize", callback_data=Stylize().pack())]]
    )


def cancel_job_keyboard(job_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=texts.CANCEL_BUTTON, callback_data=CancelJob(job=job_id).pack())]
        ]
    )


def settings_keyboard(preset: str, preserve_colors: bool, preview: bool = True) -> InlineKeyboardMarkup:
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
    return InlineKeyboardMarkup(inline_keyboard=[presets, [colors], [live]])
