"""The chaos suite's bad inputs: files for the Telegram and watched-folder doors, 40 MP uploads, a full disk.

Every watched-folder door gets a distinct prefix ("w1-", "w2-", ...) so its outcome can be found in
outbox/ or failed/ whatever the daemon does to the rest of the name (quoting, shortening).
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from chaos_harness import STYLE, photo

MP40 = (7296, 5472)  # 39.9 MP: just under images.max_pixels' default of 40 000 000
MP45 = (7800, 5800)  # over it: must be refused from the header, never decoded


def fill_disk(path: Path) -> int:
    """Write `path` until the file system is full (ENOSPC); the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    written += out.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def _gradient(size: tuple[int, int], fmt: str, **options: object) -> bytes:
    """A large smooth image that compresses to little: the case where the file is small and the pixels
    are not."""
    from PIL import Image

    ramp = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    image = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_180), ramp))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _cached(cache: Path, name: str, make: object) -> bytes:
    path = cache / name
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        data = make()  # type: ignore[operator]
        path.write_bytes(data)
    return path.read_bytes()


def bad_files(cache: Path) -> list[tuple[str, bytes, str, int | None]]:
    """(file name, bytes, MIME type, claimed size or None) of each bad file sent through Telegram."""
    good = photo(1, (640, 480))
    sliver = _cached(cache, "sliver.png", lambda: _gradient((1, 50000), "PNG"))
    bomb = _cached(cache, "bomb.png", lambda: _gradient(MP45, "PNG", compress_level=1))
    return [
        ("damaged.jpg", good[: len(good) // 2], "image/jpeg", None),
        ("claims-30mb.png", good, "image/png", 30 * 1024 * 1024),
        ("sliver.png", sliver, "image/png", None),
        ("text.png", b"this is not an image\n" * 50, "image/png", None),
        ("report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 400, "application/pdf", None),
        ("bomb-45mp.png", bomb, "image/png", None),
        ("empty.jpg", b"", "image/jpeg", None),
    ]


def large_images(cache: Path, count: int) -> list[tuple[str, bytes, str]]:
    """`count` 40 MP non-JPEG uploads, PNG and WebP alternately (the issue's worst: small files, many
    pixels)."""
    png = _cached(cache, "40mp.png", lambda: _gradient(MP40, "PNG", compress_level=1))
    webp = _cached(cache, "40mp.webp", lambda: _gradient(MP40, "WEBP", quality=40, method=0))
    return [
        (f"big-{index}.png", png, "image/png")
        if index % 2 == 0
        else (f"big-{index}.webp", webp, "image/webp")
        for index in range(count)
    ]


def drop_in_watch(
    watch: Path, cache: Path, files: list[tuple[str, bytes, str, int | None]]
) -> dict[str, str]:
    """Drop the bad files and the file-system hazards into inbox/<style>/; {prefix: what it is}."""
    inbox = watch / "inbox" / STYLE
    inbox.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, str] = {}
    index = 0

    def name(kind: str, rest: str) -> Path:
        nonlocal index
        index += 1
        dropped[f"w{index}-"] = kind
        return inbox / f"w{index}-{rest}"

    for file_name, data, _mime, _size in files:
        if file_name.endswith(".pdf"):
            continue  # the folder looks at suffixes: a .pdf is not an image file to it
        name(file_name, file_name).write_bytes(data)
    # The folder reads a file's size before its bytes? A 1.5 GB sparse file costs nothing on disk.
    with open(name("sparse-1.5gb.png", "sparse.png"), "wb") as sparse:
        sparse.truncate(1536 * 1024 * 1024)
    outside = cache / "outside.jpg"
    outside.write_bytes(photo(2))
    os.symlink(outside, name("symlink", "link.jpg"))
    os.mkfifo(name("fifo", "fifo.jpg"))
    name("newline-name", "bad\nname.jpg").write_bytes(photo(3))
    long_name = name("255-byte-name", "")
    Path(str(long_name) + "a" * (251 - len(long_name.name)) + ".jpg").write_bytes(photo(4))
    name("good", "good.jpg").write_bytes(photo(5))
    return dropped


def watch_outcome(watch: Path, dropped: dict[str, str]) -> dict[str, str]:
    """Per door: result (in outbox/), refused (in failed/), left (symlink/FIFO still in inbox, which is
    fine: the inbox refuses them by leaving them) or lost (a regular file with no result or reason)."""

    def names(top: str) -> list[str]:
        folder = watch / top / STYLE
        return os.listdir(folder) if folder.is_dir() else []

    outbox, failed, inbox = names("outbox"), names("failed"), names("inbox")
    outcome: dict[str, str] = {}
    for prefix, kind in dropped.items():
        if any(entry.startswith(prefix) for entry in outbox):
            outcome[f"{prefix}{kind}"] = "result"
        elif any(entry.startswith(prefix) for entry in failed):
            outcome[f"{prefix}{kind}"] = "refused"
        elif kind in ("symlink", "fifo") and any(entry.startswith(prefix) for entry in inbox):
            outcome[f"{prefix}{kind}"] = "left"
        else:
            outcome[f"{prefix}{kind}"] = "lost"
    return outcome
