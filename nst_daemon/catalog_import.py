"""`nstd models import NAME FILE`: install a checkpoint from a local file by the same protocol as a pull
(catalog.py's docstring): a copy staged beside the models, checked, converted, renamed, then the manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from nst_daemon import download
from nst_daemon.catalog_file import get_catalog
from nst_daemon.catalog_install import _HASH_CHUNK, _install, _lock_path
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.manifest import InstalledModel


def import_file(
    settings: Settings, name: str, file: Path, *, console: Console | None = None
) -> InstalledModel:
    """Validate, convert and install a checkpoint from a local file, the same way pull does."""
    from nst_daemon.catalog import _ensure_models_dir, _select  # catalog.py re-exports this module

    console = console or Console()
    (entry,) = _select(get_catalog(settings), [name])
    source = Path(file).expanduser()
    if not source.exists():
        raise NstdError(f"{source}: no such file")
    if not source.is_file():
        raise NstdError(f"{source} is not a regular file")
    models_dir = _ensure_models_dir(settings)

    with download.file_lock(_lock_path(models_dir, entry.file)):
        # Not `<file>.part`: that may hold an interrupted download worth resuming (or be the source itself).
        part = models_dir / f"{entry.file}.import.part"
        if source.resolve() == part.resolve():
            raise NstdError(f"{source} is nstd's own staging file; copy it elsewhere first")
        try:
            # Copy first and check the copy: the source may change under us, what we install may not.
            sha256, size = _copy_hashing(source, part)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise NstdError(f"cannot read {source}: {exc.strerror or exc}") from None
        mismatch = bool(entry.sha256) and sha256 != entry.sha256
        pinned = "catalog" if entry.sha256 and not mismatch else "import"
        notes = []
        if mismatch:
            notes.append(f"imported with sha256 {sha256}; the catalog lists {entry.sha256}")
        installed = _install(
            entry,
            models_dir,
            part,
            sha256=sha256,
            size=size,
            source=source.resolve().as_uri(),
            pinned=pinned,
            console=console,
            shown_as=str(source),
            notes=notes,
        )
    if mismatch:
        console.print(
            f"[yellow]warning:[/] {escape(name)}: the sha256 of {escape(str(source))} is {sha256}, "
            f"the catalog lists {entry.sha256}; installed anyway because it validates as a {entry.kind} "
            "checkpoint, and pinned to the imported digest",
            highlight=False,
        )
    return installed


def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_HASH_CHUNK):
            hasher.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return hasher.hexdigest(), size
