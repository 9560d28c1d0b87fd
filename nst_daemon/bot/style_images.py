"""Style images collected over several messages (the /nst flow, /savestyle): each with an optional weight
from its caption ("2", "x2"), an album acknowledged by one message that is edited as its photos arrive.

Only file ids (and weights) are kept in the conversation data, under `styles`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.fsm.context import FSMContext
from aiogram.types import InlineKeyboardMarkup, Message

from nst_daemon.bot import texts
from nst_daemon.bot.images import ImageRef, image_ref

MAX_STYLE_IMAGES = 8
WEIGHT = re.compile(r"[x×*]?\s*(\d+(?:\.\d+)?)\s*[x×]?", re.IGNORECASE)
MIN_WEIGHT, MAX_WEIGHT = 0.1, 100.0


def parse_weight(caption: str | None) -> float | None:
    """A style image's caption as its weight: '2', 'x2', '×1.5', '2x'; None when it is not one."""
    match = WEIGHT.fullmatch((caption or "").strip().replace(",", "."))
    if match is None:
        return None
    weight = float(match.group(1))
    return weight if MIN_WEIGHT <= weight <= MAX_WEIGHT else None


def image_refs(styles: list[dict[str, Any]]) -> list[ImageRef]:
    return [ImageRef.from_dict({k: v for k, v in item.items() if k != "weight"}) for item in styles]


def weights_of(styles: list[dict[str, Any]]) -> list[float] | None:
    """The job's or named style's weights, one per image: None when every image counts the same."""
    weights = [float(item.get("weight", 1.0)) for item in styles]
    return None if len(set(weights)) <= 1 else weights


def weights_text(styles: list[dict[str, Any]]) -> str:
    weights = weights_of(styles)
    return texts.NST_WEIGHTS.format(weights=", ".join(f"{w:g}" for w in weights)) if weights else ""


async def collect(
    message: Message,
    state: FSMContext,
    bot: Bot,
    reply: Callable[[list[dict[str, Any]]], tuple[str, InlineKeyboardMarkup]],
) -> None:
    """Add the message's image to the conversation's `styles` and acknowledge with `reply(styles)`."""
    ref = image_ref(message)  # an InputProblem is answered by the error handler (routers/errors.py)
    group = message.media_group_id
    data = await state.get_data()
    weight = 1.0
    if message.caption:
        parsed = parse_weight(message.caption)
        if parsed is None:
            await message.answer(texts.BAD_WEIGHT.format(caption=message.caption.strip()[:40]))
            return
        weight = parsed
    elif group and group == data.get("group"):
        weight = float(data.get("group_weight", 1.0))  # an album's caption (on its first photo) weighs all
    styles: list[dict[str, Any]] = data.get("styles", [])
    if len(styles) >= MAX_STYLE_IMAGES:
        await message.answer(texts.NST_TOO_MANY.format(limit=MAX_STYLE_IMAGES))
        return
    if all(item.get("file_id") != ref.file_id for item in styles):  # a replay after a crash adds it once
        styles.append({**ref.to_dict(), **({"weight": weight} if weight != 1.0 else {})})
    same_album = bool(group) and group == data.get("group") and data.get("ack_id")
    # Remember the image before replying: a failed reply must not lose it.
    await state.update_data(styles=styles, group=group, group_weight=weight)
    text, keyboard = reply(styles)
    if same_album:
        # One acknowledgement per album, updated as its photos arrive.
        try:
            await bot.edit_message_text(
                text=text, chat_id=message.chat.id, message_id=int(data["ack_id"]), reply_markup=keyboard
            )
            return
        except TelegramBadRequest as exc:
            if "not modified" in exc.message:
                return
    ack = await message.answer(text, reply_markup=keyboard)
    await state.update_data(ack_id=ack.message_id)
