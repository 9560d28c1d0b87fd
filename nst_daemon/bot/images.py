"""Which part of a message is an image, and getting its bytes from Telegram.

Checks that need no download come first: the Bot API refuses downloads over 20 MB, so a large
`file_size` is answered before getFile is ever called.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Message

from nst_daemon.backoff import Backoff
from nst_daemon.bot import texts
from nst_daemon.errors import NstdError

log = logging.getLogger(__name__)

DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_RETRY = Backoff((1.0, 2.0))


class InputProblem(NstdError):
    """A message the bot cannot use as an image; str() is the reply."""


@dataclass
class ImageRef:
    """What the FSM remembers of an image: enough to download it later, never the bytes."""

    file_id: str
    file_size: int | None = None
    kind: str = "photo"  # photo | document

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRef:
        return cls(**data)


def has_image(message: Message) -> bool:
    return bool(message.photo or message.document)


def image_ref(message: Message) -> ImageRef:
    """The image in a message: the largest PhotoSize of a photo, or a document with an image/* MIME type."""
    if message.photo:
        largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        ref = ImageRef(largest.file_id, largest.file_size, "photo")
    elif message.document:
        mime = (message.document.mime_type or "").lower()
        if not mime.startswith("image/"):
            raise InputProblem(texts.NOT_AN_IMAGE.format(mime=mime or "unknown type"))
        ref = ImageRef(message.document.file_id, message.document.file_size, "document")
    else:
        raise InputProblem(texts.UNSUPPORTED)
    if ref.file_size is not None and ref.file_size > DOWNLOAD_LIMIT:
        raise InputProblem(texts.TOO_BIG.format(size=texts.human_size(ref.file_size)))
    return ref


async def download(bot: Bot, ref: ImageRef) -> bytes:
    """The file's bytes; InputProblem with a user-facing reason when Telegram will not give them."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            file = await bot.get_file(ref.file_id)
            if file.file_size is not None and file.file_size > DOWNLOAD_LIMIT:
                raise InputProblem(texts.TOO_BIG.format(size=texts.human_size(file.file_size)))
            if not file.file_path:
                raise InputProblem(texts.DOWNLOAD_FAILED)
            buffer = io.BytesIO()
            await bot.download_file(file.file_path, buffer, timeout=DOWNLOAD_TIMEOUT_S)
            return buffer.getvalue()
        except InputProblem:
            raise
        except TelegramBadRequest as exc:
            if "too big" in exc.message.lower():
                raise InputProblem(texts.TOO_BIG.format(size="over 20 MB")) from None
            log.warning("telegram: getFile refused: %s", exc.message)
            raise InputProblem(texts.DOWNLOAD_FAILED) from None
        except Exception as exc:  # network errors, HTTP statuses, timeouts
            # Never log str(exc) here: a failed file download's message carries the URL, token included.
            log.warning("telegram: download failed (attempt %d): %s", attempt, type(exc).__name__)
            if attempt == DOWNLOAD_ATTEMPTS:
                raise InputProblem(texts.DOWNLOAD_FAILED) from None
            await asyncio.sleep(DOWNLOAD_RETRY.delay(attempt))
    raise InputProblem(texts.DOWNLOAD_FAILED)
