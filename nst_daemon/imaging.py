"""Bytes in, a safe sRGB image out; encoding. The resize rules are image_geometry's.

Everything a stranger can send passes through `load_image`, so it refuses early (byte cap, then the pixel
count read from the header, before any pixel is decoded) and turns every decoder failure into a typed
`ImageError` whose message a user can read. It knows nothing of Telegram, torch or the queue.
"""

from __future__ import annotations

import io
import logging
import math
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from nst_daemon.image_colour import to_srgb as _to_srgb

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
JPEG_QUALITY = 92
# The same for a JPEG's reduced decode (libjpeg's DCT scaling), which needs more room: on a zone plate made
# to alias, leaving 3.1-3.9 times the final size measured 36-46 dB against a plain Lanczos from the full
# decode, 4.1-4.5 times 47-49 dB, and from 4.55 times on as close as the box shrink (docs/benchmarks.md).
DECODE_GAP = 4.0

# The resize rules (fit_within, fit_rule, same_area_rule, ...) are image_geometry's, re-exported here.
from nst_daemon.image_geometry import (  # noqa: E402
    RESIZE_GAP as RESIZE_GAP,
)
from nst_daemon.image_geometry import SizeRule as SizeRule  # noqa: E402
from nst_daemon.image_geometry import area_size as area_size  # noqa: E402
from nst_daemon.image_geometry import crop_to as crop_to  # noqa: E402
from nst_daemon.image_geometry import fit_rule as fit_rule  # noqa: E402
from nst_daemon.image_geometry import fit_within as fit_within  # noqa: E402
from nst_daemon.image_geometry import fitted_size as fitted_size  # noqa: E402
from nst_daemon.image_geometry import reflect_pad_to_multiple as reflect_pad_to_multiple  # noqa: E402
from nst_daemon.image_geometry import same_area_rule as same_area_rule  # noqa: E402
from nst_daemon.image_geometry import scale_to_area as scale_to_area  # noqa: E402

# The decoders strangers' files may reach. Pillow knows dozens more (EPS even runs Ghostscript); none of
# them is worth the attack surface for photos. MPO is how Pillow names many phone JPEGs.
_ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
_MB = 1024 * 1024


# The error classes are image_errors', re-exported here.
from nst_daemon.image_errors import FileTooLarge as FileTooLarge  # noqa: E402
from nst_daemon.image_errors import ImageError as ImageError  # noqa: E402
from nst_daemon.image_errors import ImageTooLarge as ImageTooLarge  # noqa: E402
from nst_daemon.image_errors import NotAnImage as NotAnImage  # noqa: E402
from nst_daemon.image_errors import UnknownOutputFormat as UnknownOutputFormat  # noqa: E402
from nst_daemon.image_errors import UnsupportedImage as UnsupportedImage  # noqa: E402

# --- loading -------------------------------------------------------------------------------------------


def load_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    scale_down: int = 1,
    final_size: SizeRule | None = None,
) -> Image.Image:
    """Decode `data` into a new, fully loaded RGB image in sRGB with the EXIF orientation applied.

    Animated images give their first frame; transparency is composited onto white; the returned image
    carries no metadata (`info` is empty: no stale ICC profile, no EXIF/GPS). Raises an `ImageError`
    subclass for anything it refuses, never a decoder's own exception.

    `scale_down` (2, 4 or 8) lets a JPEG decode at that fraction of its size, in about half the time at
    8: libjpeg still reads every coefficient, so a damaged or truncated file is refused all the same. It
    is for checking an upload, not for using it; other formats decode in full.

    `final_size` is for using it: the size the caller will resize the image to, given its stored size
    (before the EXIF rotation; `fitted_size` and `area_size` answer alike either way round). A JPEG at
    least twice `DECODE_GAP` times that decodes at the reduced scale (1/2, 1/4 or 1/8) that still keeps
    `DECODE_GAP` times it, so the caller's resize gives the same picture as from a full decode, in less
    time and a fraction of the memory: a 24-megapixel photo for a 512-pixel result decodes at half size.
    """
    image = _open_lazily(data, max_pixels=max_pixels, max_bytes=max_bytes)

    with image:
        width, height = image.size
        _check_pixels(width, height, max_pixels)
        try:
            if scale_down > 1:
                image.draft(None, (max(1, width // scale_down), max(1, height // scale_down)))
            elif final_size is not None:
                _draft_for(image, final_size((width, height)))
            image.load()  # refuses truncated files: LOAD_TRUNCATED_IMAGES stays False
            _apply_orientation(image)
            result = _to_srgb(image)
        except ImageError:
            raise
        except MemoryError as exc:
            raise ImageTooLarge("not enough memory to decode this image") from exc
        except Exception as exc:
            raise UnsupportedImage() from exc
    result.info = {}
    return result


def _open_lazily(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """Pillow's lazy open: the header is parsed, no pixel is decoded yet. Every refusal is an ImageError."""
    if len(data) > max_bytes:
        raise FileTooLarge(_file_too_large(len(data), max_bytes))
    if not data:
        raise NotAnImage("this file is empty")
    _register_heif()
    try:
        return Image.open(io.BytesIO(data), formats=_open_formats())
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_bomb_message(exc, max_pixels)) from exc
    except Image.DecompressionBombWarning as exc:  # only when warnings are turned into errors
        raise ImageTooLarge(_bomb_message(exc, max_pixels)) from exc
    except MemoryError as exc:
        raise ImageTooLarge("not enough memory to open this image") from exc
    except Exception as exc:  # any parser failure on hostile input is the file's fault, not ours
        raise UnsupportedImage() from exc


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}×{height}; {_pixel_limit(max_pixels)}")
    if width < 1 or height < 1:
        raise UnsupportedImage()


def _pixel_limit(max_pixels: int) -> str:
    # Names the setting: whoever runs the server can raise it, and whoever reads the refusal can ask to.
    return f"the limit is {_megapixels(max_pixels)} megapixels (images.max_pixels)"


# --- the intake check --------------------------------------------------------------------------------------

# Refused at intake rather than failing in the engine. NST needs at least 16 px on each side of the image
# it runs at (VGG19's four poolings before its deepest layer, conv5_1, halve it four times). The smallest
# working size is the "fast" preset's 256 px, so a side ratio above 16:1 leaves less than 16 px; no phone
# panorama comes near it (a full 360° one is about 8:1).
MIN_SIDE = 16
MAX_ASPECT = 16


@dataclass(frozen=True)
class ImageInfo:
    """What intake learns of an image from its header: enough to refuse it, without its pixels."""

    format: str
    size: tuple[int, int]
    mode: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format, self.format.lower())

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format) or f"image/{self.extension}"


_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif", "HEIF": "heic"}


def check_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    jpeg_scale_down: int = 8,
) -> ImageInfo:
    """Refuse what can be refused without the full pixels: the byte cap, the format, the pixel count and
    the shape, all from the header. A JPEG is also decoded at 1/`jpeg_scale_down` of each side (1/64 of
    the pixels): libjpeg still reads every coefficient, so a damaged or truncated JPEG is refused here.
    Other formats have no reduced decode and are not decoded at all: a PNG of 40 megapixels would take
    120 MB or more to check. One whose damage shows only when decoding fails in the engine process, with
    `load_image`'s message."""
    image = _open_lazily(data, max_pixels=max_pixels, max_bytes=max_bytes)
    with image:
        width, height = image.size
        _check_pixels(width, height, max_pixels)
        shorter, longer = sorted((width, height))
        if shorter < MIN_SIDE:
            raise ImageError(f"image is {width}×{height}; each side needs at least {MIN_SIDE} px")
        if longer > MAX_ASPECT * shorter:
            raise ImageError(
                f"image is {width}×{height}, {longer / shorter:.0f} times as long as it is wide; "
                f"the limit is {MAX_ASPECT}:1"
            )
        info = ImageInfo(image.format or "", (width, height), image.mode)
        if image.format in ("JPEG", "MPO") and jpeg_scale_down > 1:
            try:
                image.draft(None, (max(1, width // jpeg_scale_down), max(1, height // jpeg_scale_down)))
                image.load()  # refuses truncated files: LOAD_TRUNCATED_IMAGES stays False
            except MemoryError as exc:
                raise ImageTooLarge("not enough memory to decode this image") from exc
            except Exception as exc:
                raise UnsupportedImage() from exc
    return info


def check_job_image(data: bytes, index: int, **options: Any) -> ImageInfo:
    """`check_image` for image `index` of a job; an error names it, as `load_job_image`'s do."""
    try:
        return check_image(data, **options)
    except ImageError as exc:
        raise type(exc)(exc.reason, image_index=index) from None


def _draft_for(image: Image.Image, target: tuple[int, int]) -> None:
    """Let a JPEG decode at the smallest DCT scale that keeps `DECODE_GAP` times `target` (a no-op for
    other formats, and when no scale of 1/2 or less keeps that much)."""
    width, height = image.size
    wanted = (math.ceil(target[0] * DECODE_GAP), math.ceil(target[1] * DECODE_GAP))
    if width >= 2 * wanted[0] and height >= 2 * wanted[1]:
        image.draft(None, wanted)  # Pillow picks the largest power-of-two scale that keeps `wanted`


def load_job_image(data: bytes, index: int, **options: Any) -> Image.Image:
    """`load_image` for image `index` of a job (0 is the content, then the styles); an error names it."""
    try:
        return load_image(data, **options)
    except ImageError as exc:
        raise type(exc)(exc.reason, image_index=index) from None


def load_image_file(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    final_size: SizeRule | None = None,
) -> Image.Image:
    """`load_image` for a file; the size is checked with stat() before a byte is read.

    Every error message starts with the path, so a log line or the CLI names the file at fault.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{path}: {_file_too_large(info.st_size, max_bytes)}")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)  # the file may grow between stat() and read()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return load_image(data, max_pixels=max_pixels, max_bytes=max_bytes, final_size=final_size)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from exc.__cause__


_heif_lock = threading.Lock()
_heif_state: bool | None = None


def _register_heif() -> bool:
    """Register pillow-heif's opener once, on first use; False when it is not installed."""
    global _heif_state
    if _heif_state is None:
        with _heif_lock:
            if _heif_state is None:
                try:
                    import pillow_heif

                    pillow_heif.register_heif_opener()
                    _heif_state = True
                except Exception as exc:  # missing or broken: HEIC gets a clear refusal instead
                    log.info("HEIC support is off: pillow-heif is unavailable (%s)", exc)
                    _heif_state = False
    return _heif_state


def _open_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format it does not know, so name only the registered ones.
    if not all(name in Image.OPEN for name in _ALLOWED_FORMATS):
        Image.init()
    return tuple(name for name in _ALLOWED_FORMATS if name in Image.OPEN)


_SUPPORTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_OTHER_MAGIC = (
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "icon (ICO)"),
)


def _unidentified(data: bytes) -> ImageError:
    """Tell a damaged photo or an unsupported format apart from a file that is no image at all."""
    head = data[:32]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            if not _register_heif():
                return UnsupportedImage("HEIC images are not supported here: pillow-heif is not installed")
            return UnsupportedImage()
        if brand in (b"avif", b"avis"):
            return UnsupportedImage("AVIF images are not supported by this installation")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return UnsupportedImage()
    for magic, _name in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return UnsupportedImage()
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return UnsupportedImage(f"{name} images are not supported; send a JPEG, PNG, WebP or HEIC")
    return NotAnImage()


def _bomb_message(exc: Exception, max_pixels: int) -> str:
    # Pillow refuses before we see the size; its message carries the pixel count, not the dimensions.
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{_megapixels(int(match.group(1)))} megapixels" if match else "too large"
    return f"image is {size}; {_pixel_limit(max_pixels)}"


def _megapixels(pixels: int) -> str:
    value = pixels / 1_000_000
    return f"{value:.1f}".removesuffix(".0") if value >= 1 else f"{value:.2g}"


def _file_too_large(size: int, limit: int) -> str:
    limit_mb = f"{limit / _MB:.1f}".removesuffix(".0")
    return f"file is {size / _MB:.1f} MB; the limit is {limit_mb} MB"


def _apply_orientation(image: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # a mangled EXIF block should not cost the user their photo
        log.debug("ignoring unreadable EXIF orientation: %s", exc)


# --- encoding ------------------------------------------------------------------------------------------


def encode_image(image: Image.Image, fmt: str = "jpeg") -> bytes:
    """Encode as "jpeg" (quality 92, 4:4:4) or "png"; no metadata is written.

    Untagged output is read as sRGB everywhere, which is what `load_image` produces.
    """
    fmt = fmt.lower()
    if image.mode not in ("RGB", "L"):
        image = _to_srgb(image)
    buffer = io.BytesIO()
    if fmt in ("jpeg", "jpg"):
        # 4:4:4 keeps the fine colour detail that stylized images are made of. No `optimize`: its second
        # pass doubles the encode time (29 against 13 ms at 1280×960) to save a few percent of size.
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0, icc_profile=None)
    elif fmt == "png":
        image.save(buffer, "PNG", icc_profile=None)
    else:
        raise UnknownOutputFormat(f"unknown image format {fmt!r}; use jpeg or png")
    return buffer.getvalue()


def is_jpeg(data: bytes) -> bool:
    """Whether `data` starts like a JPEG file (SOI marker); says nothing of whether it decodes."""
    return data[:3] == b"\xff\xd8\xff"


def format_for_path(path: Path) -> str:
    """The `encode_image` format for an output file name: .jpg/.jpeg -> "jpeg", .png -> "png"."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return "jpeg"
    if suffix == ".png":
        return "png"
    shown = f"{suffix!r}" if suffix else "no extension"
    raise UnknownOutputFormat(f"cannot write {Path(path).name}: {shown}; name the output .jpg, .jpeg or .png")
