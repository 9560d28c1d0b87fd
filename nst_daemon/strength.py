"""A style's strength for the engines without one of their own: the result blended with the content.

The blend is in CIELAB, where equal steps look like equal changes: a straight RGB mix of a painting and a
photo greys out the colours half-way, Lab keeps lightness and chroma moving evenly. AdaIN has a native
strength (α, between the feature statistics) and does not come here; see pipeline.py.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from nst_daemon.errors import NstdError

# sRGB (D65) <-> XYZ, and the D65 white point.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27


def check_strength(strength: float) -> float:
    """A strength in [0, 1]; NstdError in one line otherwise."""
    if not (isinstance(strength, int | float) and math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise NstdError(f"strength must be a number from 0 to 1 (got {strength})")
    return float(strength)


def blend_with_content(content: Image.Image, result: Image.Image, strength: float) -> Image.Image:
    """`result` at `strength` (1: as is, 0: the content), mixed in CIELAB. The content is scaled to the
    result's size first (they differ only when an engine worked at a smaller size)."""
    strength = check_strength(strength)
    if strength >= 1.0:
        return result
    content = content.convert("RGB")
    if content.size != result.size:
        content = content.resize(result.size, Image.Resampling.LANCZOS)
    mixed = strength * to_lab(result) + (1.0 - strength) * to_lab(content)
    return from_lab(mixed)


def to_lab(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


def from_lab(lab: np.ndarray) -> Image.Image:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    rgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
