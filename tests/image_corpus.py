"""Images built in code for tests: good files in every supported format and a corpus of bad input.

Nothing binary is committed; every function returns fresh bytes. Test modules import it the way
conftest imports checkpoints: `import image_corpus` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 100, 50)) -> Image.Image:
    return Image.new("RGB", size, color)


def jpeg(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 100, 50)) -> bytes:
    return encode(solid(size, color), "JPEG", quality=95)


def noisy_jpeg(size: tuple[int, int] = (256, 192), seed: int = 0) -> bytes:
    """A JPEG with real entropy, so that cutting it short leaves scans undecoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=90)


def noisy_photo(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth colour fields with fine grain, for comparing decodes by PSNR."""
    width, height = size
    rng = np.random.default_rng(seed)
    fields = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(fields, "RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return encode(
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB"), "JPEG", quality=92
    )


def zone_plate_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG made to alias: a zone plate (every frequency up to the finest) and fine stripes. Where a
    downscale's pre-filter falls short, this is where it shows."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rings = np.cos(((x - width / 2) ** 2 + (y - height / 2) ** 2) / (width * 1.3))
    channels = [rings, np.sin(x / 1.7), np.sin((x + y) / 2.3)]
    pixels = np.stack([127.5 + 127.5 * channel for channel in channels], axis=-1).astype(np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=92)


def truncated_jpeg() -> bytes:
    data = noisy_jpeg()
    return data[: len(data) // 2]


def marked(size: tuple[int, int] = (60, 30), block: int = 12) -> Image.Image:
    """Blue image with a red block in the top-left corner: tracks where a transform moves that corner."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, block, block))
    return image


def exif_rotated_jpeg(orientation: int, size: tuple[int, int] = (60, 30), block: int = 12) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(marked(size, block), "JPEG", quality=95, exif=exif.tobytes())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width`×`height` and which has no pixel data: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def large_png(width: int, height: int, value: int = 90) -> bytes:
    """A grey 8-bit RGB PNG of any size, built row by row: a 40-megapixel one is about 120 KB and never
    exists as pixels here, so a test can measure what decoding it would cost."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + bytes([value]) * (width * 3)  # filter type 0, then the pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def gif_screen_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny GIF whose logical screen claims a huge canvas."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), color) for color in (RED, (0, 255, 0), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def cmyk_jpeg(color: tuple[int, int, int, int] = (255, 0, 0, 0)) -> bytes:
    return encode(Image.new("CMYK", (16, 16), color), "JPEG", quality=95)


def png16(values: list[int]) -> bytes:
    return encode(Image.fromarray(np.array([values], dtype=np.uint16)), "PNG")


def rgba_png(pixels: list[tuple[int, int, int, int]]) -> bytes:
    image = Image.new("RGBA", (len(pixels), 1))
    for x, pixel in enumerate(pixels):
        image.putpixel((x, 0), pixel)
    return encode(image, "PNG")


def palette_image(transparent_index: int = 0) -> Image.Image:
    """Palette image: index 0 red, index 1 blue; left half index 0, right half index 1."""
    image = Image.new("P", (8, 4), 0)
    image.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    image.paste(1, (4, 0, 8, 4))
    image.info["transparency"] = transparent_index
    return image


def palette_png_transparent() -> bytes:
    return encode(palette_image(), "PNG", transparency=0)


def palette_gif_transparent() -> bytes:
    return encode(palette_image(), "GIF", transparency=0)


def tiff_float(values: list[float]) -> bytes:
    return encode(Image.fromarray(np.array([values], dtype=np.float32), "F"), "TIFF")


# --- ICC profiles ---------------------------------------------------------------------------------------


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \x00\x00\x00\x00" + _s15f16(x) + _s15f16(y) + _s15f16(z)


def linear_rgb_profile() -> bytes:
    """An ICC v2 RGB display profile with sRGB primaries and gamma 1.0 (linear light), built by hand.

    Pixels tagged with it are linear, so converting them to sRGB brightens mid-tones visibly:
    128 becomes about 188.
    """
    text = b"linear RGB (test)"
    desc = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text) + 1) + text + b"\x00"
    desc += b"\x00" * 4 + b"\x00" * 4 + b"\x00\x00" + b"\x00" + b"\x00" * 67
    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, 0x0100) + b"\x00\x00"
    tags = [
        (b"desc", desc),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, payload in tags:
        payload += b"\x00" * (-len(payload) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(payload))
        body += payload
    size = offset + len(body)
    header = struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
    header += struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\x00" * 24
    header += struct.pack(">I", 0) + _s15f16(0.9642) + _s15f16(1.0) + _s15f16(0.8249)
    header += b"\x00" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def png_with_profile(color: tuple[int, int, int], icc: bytes) -> bytes:
    return encode(Image.new("RGB", (8, 8), color), "PNG", icc_profile=icc)


# --- bad input -------------------------------------------------------------------------------------------


def bad_inputs() -> dict[str, bytes]:
    """Named files that `load_image` must refuse with a typed error (never a traceback)."""
    good_png = encode(solid(), "PNG")
    return {
        "empty": b"",
        "text named .jpg": b"Dear diary, today I renamed a text file to holiday.jpg.\n" * 4,
        "html": b"<!DOCTYPE html><html><body>not an image</body></html>",
        "one byte": b"\xff",
        "jpeg magic only": b"\xff\xd8\xff",
        "truncated jpeg": truncated_jpeg(),
        "jpeg header only": noisy_jpeg()[:200],
        "png signature only": b"\x89PNG\r\n\x1a\n",
        "truncated png": good_png[: len(good_png) // 2],
        "png bad crc": good_png[:29] + b"\x00\x00\x00\x00" + good_png[33:],
        "png zero size": png_header_only(0, 0),
        "png bomb header": png_header_only(30000, 30000),
        "gif screen bomb": gif_screen_bomb(),
        "truncated gif": animated_gif()[:40],
        "truncated webp": encode(solid(), "WEBP")[:30],
        "truncated tiff": encode(solid(), "TIFF")[:60],
        "truncated bmp": encode(solid(), "BMP")[:80],
        "random bytes": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "psd magic": b"8BPS" + b"\x00" * 60,
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "heic ftyp garbage": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    }
