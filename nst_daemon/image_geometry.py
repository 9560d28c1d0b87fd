"""The resize rules every engine and the decoder share: fit within a side, scale to an area, and the
padding an ONNX generator needs. Torch-free and Telegram-free, like imaging.py, which re-exports them."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image

# Pillow's `reducing_gap` for every downscale: a cheap integer-factor box shrink first, as long as this many
# times the final size is left for Lanczos to finish. From 3 on the result is indistinguishable from plain
# Lanczos (Pillow's documentation).
RESIZE_GAP = 3.0

# The size a caller will resize an image to, given the image's size: see `imaging.load_image`'s `final_size`.
SizeRule = Callable[[tuple[int, int]], tuple[int, int]]


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos, aspect kept) so the longest side is at most `max_side`; never upscale.

    Returns `image` itself when it already fits.
    """
    size = fitted_size(image.size, max_side)
    return image if size == image.size else _resize(image, size)


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size `fit_within` gives an image of `size`."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return (max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale))))


def scale_to_area(image: Image.Image, area: int) -> Image.Image:
    """Resize (Lanczos, aspect kept, up or down) so width × height is about `area`; the whole image stays.

    Returns `image` itself when it already has that size.
    """
    size = area_size(image.size, area)
    return image if size == image.size else _resize(image, size)


def fit_rule(max_side: int) -> SizeRule:
    """`load_image`'s `final_size` for an image that will be fitted within `max_side` (`fit_within`)."""
    return partial(fitted_size, max_side=max_side)


def same_area_rule(size: tuple[int, int]) -> SizeRule:
    """`load_image`'s `final_size` for an image that will be scaled to the area of `size` (`scale_to_area`),
    as NST scales its style images to the fitted content's."""
    return partial(area_size, area=size[0] * size[1])


def area_size(size: tuple[int, int], area: int) -> tuple[int, int]:
    """The size `scale_to_area` gives an image of `size`."""
    if area < 1:
        raise ValueError(f"area must be at least 1, got {area}")
    width, height = size
    scale = math.sqrt(area / (width * height))
    new_width, new_height = round(width * scale), round(height * scale)
    # A sliver would round one side to 0: keep 1 px there and give the area to the other side.
    if new_width < 1:
        return 1, max(1, area)
    if new_height < 1:
        return max(1, area), 1
    return new_width, new_height


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Several times faster than plain Lanczos on 40-megapixel photos (see RESIZE_GAP).
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_GAP)


def reflect_pad_to_multiple(array: np.ndarray, multiple: int = 4) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad an H×W or H×W×C array at the bottom and right so both H and W divide by `multiple`.

    Reflect padding (no visible seam for the generator to react to); a side too short to reflect
    (1 px, or fewer pixels than the padding needs) is edge-padded instead. Returns the padded array and
    the original (height, width) for `crop_to`. Works for any dtype.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an H×W or H×W×C array, got shape {array.shape}")
    height, width = array.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"cannot pad an empty array of shape {array.shape}")
    padded = array
    for axis, length in ((0, height), (1, width)):
        extra = -length % multiple
        if extra:
            widths = [(0, 0)] * array.ndim
            widths[axis] = (0, extra)
            mode = "reflect" if extra <= length - 1 else "edge"
            padded = np.pad(padded, widths, mode=mode)
    return padded, (height, width)


def crop_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut a padded H×W(×C) array back to `size` = (height, width), the second value from the pad."""
    height, width = size
    if height > array.shape[0] or width > array.shape[1]:
        raise ValueError(f"cannot crop shape {array.shape} to {height}×{width}")
    return array[:height, :width]
