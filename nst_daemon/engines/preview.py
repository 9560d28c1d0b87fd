"""Small JPEG snapshots of an image being painted, for a live preview (the bot's status photo).

A preview crosses the engine-process pipe and goes to Telegram as is, so it is kept small: at most
PREVIEW_SIDE px on its longest side, a few kB of JPEG, never the raw pixels (a 1024² float tensor is 12 MB).
Taking one costs a copy to the CPU, a resize and an encode: a few milliseconds, once every few seconds.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # the bot shrinks finished pictures with this module too, and never imports torch
    import torch

PREVIEW_SIDE = 320
PREVIEW_QUALITY = 70


def preview_jpeg(image: torch.Tensor | Image.Image, side: int = PREVIEW_SIDE) -> bytes:
    """A JPEG of `image` (a (1, 3, H, W) tensor in 0..1, or a PIL image) fitted within `side` px."""
    if isinstance(image, Image.Image):
        picture = image.convert("RGB")
        picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    else:
        import torch.nn.functional as F

        # Shrunk on the device first: only the small image is copied and converted.
        height, width = image.shape[-2:]
        factor = min(1.0, side / max(height, width))
        small = image.detach()
        if factor < 1.0:
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            small = F.interpolate(small, size=size, mode="area")
        array = small[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(array.copy(), "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()
