"""The pretrained styles, as the catalog lists them: the one list the bot's buttons and texts, the
watched folder's style directories, `nstd stylize --style` and the config's checks read.

A style is a catalog entry with a `style` key whose kind belongs to an engine with pretrained styles
(CycleGAN today): a new style is one catalog entry. The catalog is read once per file version.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nst_daemon.catalog_file import CatalogEntry, catalog_path, default_catalog_path, load_catalog
from nst_daemon.engines import registry

if TYPE_CHECKING:
    from nst_daemon.config import Settings


@dataclass(frozen=True)
class PretrainedStyle:
    key: str  # as typed, after style_names.normalize_style: "vangogh"
    label: str  # "Van Gogh"
    description: str
    model: str  # its catalog name
    engine: str  # its engine's key


_cache: dict[Path, tuple[float, dict[str, CatalogEntry]]] = {}
_lock = threading.Lock()
_process_catalog: Path | None = None


def current_catalog(settings: Settings | None = None) -> dict[str, CatalogEntry]:
    """The catalog `settings` names (models.catalog); re-read when it changes.

    Without `settings`, the catalog this process was last asked for with settings, else the packaged
    one: a process runs one config, and a label deep in the bot (a job's "Van Gogh") has no settings at
    hand."""
    global _process_catalog
    if settings is not None:
        path = _process_catalog = catalog_path(settings)
    elif _process_catalog is not None and _process_catalog.is_file():
        path = _process_catalog
    else:
        path = default_catalog_path()
    mtime = path.stat().st_mtime
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    entries = load_catalog(path)
    with _lock:
        _cache[path] = (mtime, entries)
    return entries


def pretrained_styles(settings: Settings | None = None) -> dict[str, PretrainedStyle]:
    """Style key -> style, in catalog order."""
    styles: dict[str, PretrainedStyle] = {}
    for entry in current_catalog(settings).values():
        engine = registry.engine_of_kind(entry.kind)
        if entry.style and engine is not None and engine.pretrained_styles:
            label = entry.label or entry.style
            styles[entry.style] = PretrainedStyle(
                entry.style, label, entry.description, entry.name, engine.key
            )
    return styles


def style_keys(settings: Settings | None = None) -> list[str]:
    return list(pretrained_styles(settings))


def style_label(key: str, settings: Settings | None = None) -> str:
    """A pretrained style's name for people ("Van Gogh"); the key itself for any other."""
    style = pretrained_styles(settings).get(key)
    return style.label if style is not None else key


def engine_for_style(key: str, settings: Settings | None = None) -> str | None:
    """The engine of a pretrained style, None when `key` is not one."""
    style = pretrained_styles(settings).get(key)
    return style.engine if style is not None else None


def job_label(
    engine: str,
    styles: list[str],
    style_images: int,
    settings: Settings | None = None,
    named: str | None = None,
) -> str:
    """How a job is named to its owner and in `nstd jobs`: "Van Gogh", "mycat" (a named style),
    "Multi-style NST (2 style images)"."""
    if named:
        return named
    try:
        plugin = registry.get(engine)
    except registry.UnknownEngine:
        return engine
    label = style_label(styles[0], settings) if plugin.pretrained_styles and styles else None
    return plugin.job_label(styles, style_images, label)


def file_label(engine: str, styles: list[str]) -> str:
    """The word in a result's file name: photo.monet.jpg, photo.nst.jpg."""
    try:
        return registry.get(engine).file_label(styles)
    except registry.UnknownEngine:
        return engine
