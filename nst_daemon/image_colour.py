"""Colour for decoded images: any mode and embedded ICC profile -> 8-bit sRGB (littlecms through Pillow's
ImageCms, when Pillow has it). Split from imaging.py, which calls `to_srgb` on every image it decodes."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

try:
    from PIL import ImageCms
except ImportError:  # a Pillow built without littlecms: colours pass through unmanaged
    ImageCms = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_WHITE = (255, 255, 255)  # what transparency is flattened onto


def to_srgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to a new 8-bit RGB image in sRGB, alpha composited onto white."""
    icc = image.info.get("icc_profile")
    image = _to_8bit(image)
    if image.mode in ("RGBa", "La"):  # premultiplied
        image = image.convert(image.mode.upper())
    if image.mode == "P":
        has_alpha = "transparency" in image.info or (image.palette is not None and "A" in image.palette.mode)
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    if "transparency" in image.info and image.mode in ("L", "RGB"):  # a tRNS colour key
        image = image.convert("LA" if image.mode == "L" else "RGBA")

    alpha = None
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        image = image.convert(image.mode[:-1])
    if image.mode not in ("RGB", "L", "CMYK", "LAB"):
        image = image.convert("RGB")

    rgb = _apply_profile(image, icc)
    if alpha is not None and alpha.getextrema() != (255, 255):
        background = Image.new("RGB", rgb.size, _WHITE)
        background.paste(rgb, mask=alpha)
        rgb = background
    return rgb


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit L, scaled rather than clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit range for both: Pillow decodes 16-bit PNG/TIFF to I;16*, and "I" has no range of its own.
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:  # not normalised: stretch what is there
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")
    return image


def _apply_profile(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert RGB/L/CMYK/LAB to sRGB RGB through the embedded profile when there is a usable one."""
    if ImageCms is not None:
        try:
            if icc:
                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                # Conversion through an sRGB profile is (nearly) the identity; skip the rounding and time.
                if image.mode == "RGB" and "sRGB" in (source.profile.profile_description or ""):
                    return image.convert("RGB")
                return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
            if image.mode == "LAB":
                return ImageCms.profileToProfile(image, _lab_profile(), _srgb_profile(), outputMode="RGB")
        except Exception as exc:  # a broken or mismatched profile: fall back to plain conversion
            log.debug("ignoring unusable ICC profile: %s", exc)
    return image.convert("RGB")


_profiles: dict[str, object] = {}


def _srgb_profile() -> object:
    if "sRGB" not in _profiles:
        _profiles["sRGB"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _profiles["sRGB"]


def _lab_profile() -> object:
    if "LAB" not in _profiles:
        _profiles["LAB"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
    return _profiles["LAB"]
