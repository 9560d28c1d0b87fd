"""The style sheet: one picture of a photo in every available style (the installed built-in CycleGAN styles,
then the named styles), each tile labelled, so a user picks a style by looking.

Each tile is an ordinary job through the runner (EngineRunner in the CLI, the daemon's engine process in
the bot) at a small size, so the sheet takes a few engine passes at 256 px. `cache_key` names the sheet
by what is in it (style names, model digests, named styles' record times, the photo), so a cached sheet
is rebuilt exactly when the set of styles changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from nst_daemon import imaging, named_styles
from nst_daemon.config import Settings
from nst_daemon.errors import Cancelled, NstdError
from nst_daemon.jobs import Job
from nst_daemon.manifest import read_manifest
from nst_daemon.style_catalog import pretrained_styles

if TYPE_CHECKING:
    from pathlib import Path

    import sqlite_utils
    from rich.console import Console

log = logging.getLogger(__name__)

TILE = 256  # px, the longest side of a tile's picture
LABEL_HEIGHT = 22
SHEET_FORMAT = 1  # bump when the drawing changes: old cached sheets are not reused
BACKGROUND = (245, 245, 245)
INK = (20, 20, 20)


@dataclass(frozen=True)
class SheetStyle:
    name: str  # the tile's label: a built-in style's or a named style's name
    version: str  # the model's digest (built-in) or the record's time (named): part of the cache key
    named: named_styles.NamedStyle | None = None
    engine: str = ""  # a built-in style's engine (a named style's is its record's)


def available(settings: Settings, db: sqlite_utils.Database | None, owner: str = "") -> list[SheetStyle]:
    """The styles that can run here: built-ins whose model is installed, then the named styles (everyone's,
    and `owner`'s own) whose engine's models are installed."""
    manifest = read_manifest(settings.paths.models_dir)
    styles = [
        SheetStyle(style.key, manifest[style.model].sha256, engine=style.engine)
        for style in pretrained_styles(settings).values()
        if style.model in manifest
    ]
    if db is None:
        return styles
    for named in named_styles.usable_by(db, owner) if owner else named_styles.list_styles(db):
        try:
            named_styles.check_models(settings, named.engine)
        except named_styles.StyleRefused:
            continue
        styles.append(SheetStyle(named.name, f"{named.updated_at!r}", named))
    return styles


def cache_key(styles: list[SheetStyle], photo: bytes, tile: int = TILE) -> str:
    described = [SHEET_FORMAT, tile, hashlib.sha256(photo).hexdigest(), [(s.name, s.version) for s in styles]]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:32]


def build(
    settings: Settings,
    runner: Any,
    store: Any,
    photo: bytes,
    styles: list[SheetStyle],
    *,
    tile: int = TILE,
    keep_going: Callable[[], bool] = lambda: True,
) -> Image.Image:
    """The sheet: the photo, then one tile per style that ran (a style whose engine fails is left out and
    logged). `runner` is anything with EngineRunner's `run`. Before each style `keep_going()` is asked:
    False (the daemon is stopping) raises Cancelled, as does a run its runner cancelled, so a stopping
    daemon's runner is not asked to start its engines again for the next tile."""
    if not styles:
        raise NstdError(
            "no styles to show: pull a built-in style (`nstd models pull style_monet`) or add a named "
            "style (`nstd styles add NAME IMAGE`)"
        )
    content = imaging.load_image(photo, **settings.images.limits, final_size=imaging.fit_rule(tile))
    small = imaging.encode_image(content, "jpeg")
    tiles = [("photo", content)]
    for style in styles:
        if not keep_going():
            raise Cancelled("the style sheet was stopped")
        try:
            tiles.append((style.name, _stylize(settings, runner, store, small, style, tile)))
        except Cancelled:
            raise
        except NstdError as exc:
            log.warning("style sheet: %s left out: %s", style.name, exc.message)
    return _compose(tiles, tile)


def make_sheet_file(settings: Settings, photo: Path, output: Path, *, force: bool, console: Console) -> None:
    """`nstd styles sheet PHOTO -o OUTPUT`: the output rule of `nstd stylize` (never an input, an existing
    file only with --force), the tiles through EngineRunner in this process."""
    from nst_daemon import db
    from nst_daemon.output_file import check_output, resolve_output, write_output
    from nst_daemon.runner import EngineRunner
    from nst_daemon.store import open_store

    output = resolve_output(output, f"{photo.stem}.styles.jpg")
    output_format = imaging.format_for_path(output)
    check_output(output, inputs=[photo], force=force)
    limits = settings.images.limits
    data = imaging.encode_image(imaging.load_image_file(photo, **limits, final_size=imaging.fit_rule(TILE)))
    database = db.connect(settings.db_path) if settings.db_path.exists() else None
    styles = available(settings, database)
    started = time.perf_counter()
    sheet = build(settings, EngineRunner(settings), open_store(settings), data, styles)
    write_output(output, imaging.encode_image(sheet, output_format), force=force)
    console.print(
        f"wrote {output} ({len(styles)} style(s), {sheet.width}×{sheet.height}) "
        f"in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )


def _stylize(
    settings: Settings, runner: Any, store: Any, content: bytes, style: SheetStyle, tile: int
) -> Image.Image:
    named = style.named
    images = named_styles.load_images(settings, store, named) if named else []
    params: dict[str, Any] = {"max_side": tile, "preset": "fast"}
    if named:
        params.update(named.params)
    job = _job(named.engine if named else style.engine, [style.name], params)
    result = runner.run(job, content, images, lambda *_: None, threading.Event())
    if result.image is not None:
        return result.image
    return imaging.load_image(result.encoded())


def _job(engine: str, styles: list[str], params: dict[str, Any]) -> Job:
    now = time.time()
    return Job(
        id=0, source="cli", owner="style-sheet", engine=engine, styles=styles, params=params,
        state="running", progress=0.0, attempts=1, error=None, input_keys=[], output_key=None,
        delivery="none", delivery_attempts=0, reply={}, created_at=now, started_at=now, finished_at=None,
    )  # fmt: skip


def _compose(tiles: list[tuple[str, Image.Image]], tile: int) -> Image.Image:
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_height = tile + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * tile, rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (label, picture) in enumerate(tiles):
        left, top = (index % columns) * tile, (index // columns) * cell_height
        picture = picture.copy()
        picture.thumbnail((tile, tile))
        # Bottom-aligned, so the label sits right under its picture.
        sheet.paste(picture, (left + (tile - picture.width) // 2, top + tile - picture.height))
        width = draw.textlength(label, font=font)
        draw.text((left + (tile - width) / 2, top + tile + 4), label, fill=INK, font=font)
    return sheet


def sample_photo(width: int = 384, height: int = 256) -> bytes:
    """A generated landscape (sky, sun, hills, water) for the bot's sheet: no file to ship or lose."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = height * 3 // 5
    for y in range(horizon):
        shade = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * shade), int(150 + 70 * shade), 235))
    for y in range(horizon, height):
        shade = (y - horizon) / (height - horizon)
        draw.line([(0, y), (width, y)], fill=(30, int(90 + 40 * shade), int(150 - 40 * shade)))
    draw.ellipse([width * 0.68, height * 0.12, width * 0.82, height * 0.33], fill=(255, 214, 90))
    draw.polygon([(0, horizon), (width * 0.3, height * 0.32), (width * 0.6, horizon)], fill=(70, 110, 60))
    draw.polygon([(width * 0.35, horizon), (width * 0.7, height * 0.4), (width, horizon)], fill=(50, 90, 50))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()
