"""Named styles: one or more style images (with optional weights), an engine and a strength, saved under a
name that works wherever a built-in style does (`nstd stylize --style NAME`, the watched folder's
`inbox/NAME/`, the default style).

The record lives in SQLite (the `styles` table), the images in the object store under
`styles/<name>/<version>/<n>.<ext>` (a bot user's own style: `styles/user-<id>/<name>/...`, record owner
`<id>`; the owner's styles have owner ""): a replacement (`--force`) writes a new version before the record
points at it, so a failure half-way never leaves a style whose images are gone.
"""

from __future__ import annotations

import json
import math
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst_daemon import imaging
from nst_daemon.config import Settings
from nst_daemon.engines import registry
from nst_daemon.errors import ModelNotInstalled, NstdError
from nst_daemon.manifest import runnable_path
from nst_daemon.style_catalog import style_keys
from nst_daemon.style_names import normalize_style

if TYPE_CHECKING:
    import sqlite_utils
    from rich.console import Console

# Folder names of the watched folder's inbox/ that mean something already; a named style may not take one.
RESERVED_NAMES = ("default", "nst", "instant")
MAX_NAME = 40
KEY_PREFIX = "styles/"


class StyleRefused(NstdError):
    """A named style that cannot be saved or used; the message is the one line the user sees."""


@dataclass(frozen=True)
class NamedStyle:
    name: str
    engine: str  # adain | nst
    strength: float | None  # AdaIN's α; None for NST (it has no strength yet)
    weights: list[float] | None  # one per image, as given (normalised when used); None: equal
    image_keys: list[str]
    updated_at: float
    owner: str = ""  # "": everyone's (the CLI's); a Telegram user id: that user's own, private style

    @property
    def params(self) -> dict[str, Any]:
        """A job's params for this style (the runner's adain/nst keys), and its name for labels."""
        params: dict[str, Any] = {"style_name": self.name}
        if self.strength is not None:
            params["strength"] = self.strength
        if self.weights is not None:
            params["style_weights"] = list(self.weights)
        return params


def check_name(text: str) -> str:
    """The style's name in the project's one spelling (style_names.normalize_style), or a one-line refusal
    when it is empty, too long, or shadows a built-in style or a reserved folder."""
    name = normalize_style(text)
    if not name:
        raise StyleRefused(f"{text!r} is not a usable style name: use letters and digits")
    if len(name) > MAX_NAME:
        raise StyleRefused(f"style name {name!r} is too long: at most {MAX_NAME} letters and digits")
    if name in style_keys():
        raise StyleRefused(f"{name!r} is a built-in style; choose another name for a named style")
    if name in RESERVED_NAMES:
        raise StyleRefused(f"{name!r} is reserved (a folder of the watched inbox); choose another name")
    return name


def required_models(engine: str, settings: Settings | None = None) -> tuple[str, ...]:
    """The catalog models a style of `engine` needs (the registry's plugin says which)."""
    from nst_daemon.style_catalog import current_catalog

    return registry.get(engine).models(None, current_catalog(settings))


def check_models(settings: Settings, engine: str) -> None:
    """Refuse, in one line, a style whose engine cannot run here (its models are not installed)."""
    missing = []
    for model in required_models(engine, settings):
        try:
            runnable_path(settings.paths.models_dir, model)
        except ModelNotInstalled:
            missing.append(model)
    if missing:
        raise StyleRefused(
            f"engine {engine} needs model{'s' if len(missing) > 1 else ''} {' and '.join(missing)}, "
            f"not installed: run `nstd models pull {' '.join(missing)}`"
        )


def _read_image(path: Path, settings: Settings) -> tuple[bytes, imaging.ImageInfo]:
    """The file's bytes once they decode as an image within the limits; else a one-line refusal naming it."""
    limits = settings.images.limits
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise StyleRefused(f"{path}: not a regular file")
        if info.st_size > limits["max_bytes"]:
            raise StyleRefused(f"{path}: larger than images.max_bytes ({limits['max_bytes']} bytes)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise StyleRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise StyleRefused(f"{path}: cannot read: {exc.strerror or exc}") from None
    return data, check_image_bytes(data, settings, str(path))


def check_image_bytes(data: bytes, settings: Settings, label: str) -> imaging.ImageInfo:
    """What the bytes are, once they decode as an image within the limits; else a one-line refusal."""
    limits = settings.images.limits
    try:
        header = imaging.check_image(data, **limits)
        imaging.load_image(data, **limits)  # a full decode: a damaged file is refused now, not at use
    except imaging.ImageError as exc:
        raise StyleRefused(f"{label}: {getattr(exc, 'reason', None) or exc.message}") from None
    return header


def _check_params(engine: str, strength: float | None, weights: list[float] | None, count: int) -> None:
    from nst_daemon.engines.adain import check_strength, normalized_weights

    engines = [plugin.key for plugin in registry.image_engines()]  # the engines that take style images
    if engine not in engines:
        raise StyleRefused(f"unknown engine {engine!r}; choose one of: {', '.join(engines)}")
    if strength is not None:
        check_strength(strength)
        if engine != "adain":
            raise StyleRefused("--strength applies to --engine adain only")
    if weights is not None:
        normalized_weights(weights, count)
    if not count:
        raise StyleRefused("a named style needs at least one style image")


def add(
    settings: Settings,
    db: sqlite_utils.Database,
    store: Any,
    name: str,
    images: list[Path],
    *,
    engine: str = "adain",
    strength: float | None = None,
    weights: list[float] | None = None,
    force: bool = False,
) -> NamedStyle:
    """`nstd styles add`: everyone's style from image files (see `add_images`)."""
    key = check_name(name)
    _check_params(engine, strength, weights, len(images))
    check_free(db, key, "", force)
    read = [_read_image(Path(path), settings) for path in images]
    return add_images(
        settings, db, store, key, read, engine=engine, strength=strength, weights=weights, force=force
    )


def add_images(
    settings: Settings,
    db: sqlite_utils.Database,
    store: Any,
    name: str,
    images: list[tuple[bytes, imaging.ImageInfo]],
    *,
    engine: str = "adain",
    strength: float | None = None,
    weights: list[float] | None = None,
    force: bool = False,
    owner: str = "",
) -> NamedStyle:
    """Check everything (name, parameters, models), store the images (bytes already checked with
    `check_image_bytes`), then write the record. An existing name is replaced only with `force`; its old
    images are deleted once the new record is in. A user's own style (`owner`) may not take the name of
    everyone's style either: the name would mean two things to that user."""
    key = check_name(name)
    _check_params(engine, strength, weights, len(images))
    old = check_free(db, key, owner, force)
    check_models(settings, engine)
    bucket = settings.store.bucket
    version = time.time_ns()
    folder = f"{KEY_PREFIX}user-{owner}/{key}" if owner else f"{KEY_PREFIX}{key}"
    keys = []
    try:
        for index, (data, info) in enumerate(images, start=1):
            object_key = f"{folder}/{version}/{index}.{info.extension}"
            store.put_object(Bucket=bucket, Key=object_key, Body=data, ContentType=info.content_type)
            keys.append(object_key)
        row = {
            "owner": owner,
            "name": key,
            "engine": engine,
            "strength": strength if engine == "adain" else None,
            "weights": json.dumps(weights) if weights is not None else None,
            "image_keys": json.dumps(keys),
            "updated_at": time.time(),
        }
        with db.conn:
            db["styles"].upsert(row, pk=("owner", "name"))
    except BaseException:
        _delete_objects(store, bucket, keys)  # nothing refers to them yet
        raise
    if old is not None:
        _delete_objects(store, bucket, old.image_keys)
    added = get(db, key, owner)
    assert added is not None
    return added


def check_free(db: sqlite_utils.Database, key: str, owner: str, force: bool) -> NamedStyle | None:
    """The style `key` (normalised) of `owner` that `force` replaces, or a refusal when the name is taken."""
    if owner and get(db, key) is not None:
        raise StyleRefused(f"{key!r} is the name of a shared style; choose another name")
    old = get(db, key, owner)
    if old is not None and not force:
        if owner:
            raise StyleRefused(f"you already have a style {key!r}; choose another name")
        raise StyleRefused(
            f"style {key!r} already exists: `nstd styles remove {key}` first, or add it with --force"
        )
    return old


def remove(
    settings: Settings, db: sqlite_utils.Database, store: Any, name: str, owner: str = ""
) -> NamedStyle:
    """Delete the record, then its images. The inbox folder stays: it may hold the user's files."""
    style = get(db, normalize_style(name), owner)
    if style is None:
        raise StyleRefused(f"no named style {name!r}; `nstd styles list` shows them")
    with db.conn:
        db["styles"].delete((style.owner, style.name))
    _delete_objects(store, settings.store.bucket, style.image_keys)
    return style


def get(db: sqlite_utils.Database, name: str, owner: str = "") -> NamedStyle | None:
    """Everyone's style `name` (already normalised), or `owner`'s own."""
    if not db["styles"].exists():
        return None
    rows = list(db["styles"].rows_where("name = ? and owner = ?", [name, owner]))
    return _from_row(rows[0]) if rows else None


def lookup(db: sqlite_utils.Database, text: str, user: str) -> NamedStyle | None:
    """The style a user means by `text` (any spelling): everyone's, else the user's own."""
    name = normalize_style(text)
    if not name:
        return None
    return get(db, name) or get(db, name, user)


def list_styles(db: sqlite_utils.Database, owner: str = "") -> list[NamedStyle]:
    """Everyone's styles, or with `owner` that user's own, by name."""
    if not db["styles"].exists():
        return []
    return [_from_row(row) for row in db["styles"].rows_where("owner = ?", [owner], order_by="name")]


def usable_by(db: sqlite_utils.Database, user: str) -> list[NamedStyle]:
    """The styles a bot user can pick: everyone's, then the user's own."""
    return [*list_styles(db), *list_styles(db, user)]


def find(settings: Settings, name: str) -> NamedStyle | None:
    """The named style `name` (already normalised), without creating a state database that is not there."""
    from nst_daemon import db as database

    if not settings.db_path.exists():
        return None
    return get(database.connect(settings.db_path), name)


def load_images(settings: Settings, store: Any, style: NamedStyle) -> list[bytes]:
    """The style's images as stored; a missing one is a one-line error naming the style."""
    from nst_daemon.store import get_bytes, is_not_found

    images = []
    for key in style.image_keys:
        try:
            images.append(get_bytes(store, settings.store.bucket, key))
        except Exception as exc:
            if is_not_found(exc):
                raise StyleRefused(
                    f"style {style.name!r} has lost its image {key} in the object store: add it again "
                    "with `nstd styles add --force`"
                ) from None
            raise
    return images


def _from_row(row: dict[str, Any]) -> NamedStyle:
    strength = row["strength"]
    return NamedStyle(
        name=row["name"],
        engine=row["engine"],
        strength=None if strength is None or not math.isfinite(strength) else float(strength),
        weights=json.loads(row["weights"]) if row["weights"] else None,
        image_keys=json.loads(row["image_keys"]),
        updated_at=row["updated_at"],
        owner=row.get("owner") or "",
    )


def _delete_objects(store: Any, bucket: str, keys: list[str]) -> None:
    for key in keys:
        store.delete_object(Bucket=bucket, Key=key)


def print_list(styles: list[NamedStyle], console: Console) -> None:
    """`nstd styles list`: one row per style; the built-ins are named in a line below."""
    from rich.table import Table

    if styles:
        table = Table("name", "engine", "strength", "images", "weights", box=None, pad_edge=False)
        for style in styles:
            table.add_row(
                style.name,
                style.engine,
                "" if style.strength is None else f"{style.strength:g}",
                str(len(style.image_keys)),
                "equal" if style.weights is None else ", ".join(f"{w:g}" for w in style.weights),
            )
        console.print(table)
    else:
        console.print("no named styles yet: `nstd styles add NAME IMAGE...` saves one")
    console.print(f"built-in styles: {', '.join(style_keys())}", style="dim", highlight=False)
