"""The install step that pull and import share (catalog.py's protocol, steps 2-4): check, validate, export
ONNX, rename into place, rewrite the manifest under its lock. Split from catalog.py, which re-exports it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal

from nst_daemon import download
from nst_daemon.catalog_file import CatalogEntry
from nst_daemon.engines import registry
from nst_daemon.errors import NstdError, describe_failure
from nst_daemon.fsutil import fsync_dir, sha256_file
from nst_daemon.manifest import InstalledModel, read_manifest, write_manifest

LOCK_DIR = ".locks"
_HASH_CHUNK = 1 << 20
_PINNED_LABELS = {"catalog": "catalog sha256", "tofu": "first use (tofu)", "import": "import"}


def _lock_path(models_dir: Path, file: str) -> Path:
    # Lock files live apart from the models: they are never deleted (see download.file_lock).
    return models_dir / LOCK_DIR / f"{file}.lock"


def _sha256_file(path: Path) -> str:
    return sha256_file(path, _HASH_CHUNK)


def _install(
    entry: CatalogEntry,
    models_dir: Path,
    part: Path,
    *,
    sha256: str,
    size: int,
    source: str,
    pinned: str,
    console: Console,
    shown_as: str,
    notes: list[str] | None = None,
) -> InstalledModel:
    """Validate the staged checkpoint `part`, build the runnable file, rename into place, record it.

    `shown_as` names the file in errors as the user knows it: the URL, or the imported file's path."""
    notes = list(notes or [])
    staged = [part]
    built_sha256: dict[str, str] = {}
    try:
        validate_checkpoint(entry.kind, part, shown_as)
        if entry.runnable != entry.file:
            onnx_part = models_dir / f"{entry.runnable}.part"
            staged.append(onnx_part)
            console.print(f"{entry.name}: converting to ONNX (checking it against PyTorch)")
            started = time.perf_counter()
            diff = _export_onnx(entry.kind, part, onnx_part)
            notes.append(f"ONNX export: max abs difference to PyTorch {diff:.1e}")
            console.print(
                f"{entry.name}: ONNX export ok in {time.perf_counter() - started:.1f} s "
                f"(max abs difference {diff:.1e})"
            )
            built_sha256[entry.runnable] = _sha256_file(onnx_part)
            os.replace(onnx_part, models_dir / entry.runnable)
        os.replace(part, models_dir / entry.file)
        fsync_dir(models_dir)
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    record = InstalledModel(
        name=entry.name,
        kind=entry.kind,
        sha256=sha256,
        size=size,
        source=source,
        installed_at=time.time(),
        files=entry.files,
        runnable=entry.runnable,
        pinned=pinned,
        notes=notes,
        built_sha256=built_sha256,
    )
    with download.file_lock(_lock_path(models_dir, "manifest")):
        models = read_manifest(models_dir)
        previous = models.get(entry.name)
        models[entry.name] = record
        write_manifest(models_dir, models)
    if previous is not None:
        for stale in set(previous.files) - set(record.files):
            (models_dir / stale).unlink(missing_ok=True)
    console.print(
        f"[green]{entry.name}: installed[/] {entry.runnable} ({decimal(size)}, sha256 {sha256[:12]}, "
        f"pinned: {_PINNED_LABELS.get(pinned, pinned)})",
        highlight=False,
    )
    return record


def _export_onnx(kind: str, checkpoint: Path, onnx_path: Path) -> float:
    """Build the ONNX file of a checkpoint, checked against PyTorch; the max difference found."""
    model_kind = registry.model_kind(kind)
    assert model_kind is not None and model_kind.export is not None, kind
    return model_kind.export(kind, checkpoint, onnx_path)


def validate_checkpoint(kind: str, path: Path, shown_as: str | None = None) -> None:
    """Load with weights_only and check keys and shapes against the architecture; NstdError names the key.

    `shown_as` is how the user knows the file (the URL or the imported path), not its staging name.
    """
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise NstdError(
            f"{shown_as or path.name} is not a PyTorch checkpoint nstd can load ({_load_failure(exc)}); "
            "nothing was installed"
        ) from None
    model_kind = registry.model_kind(kind)
    try:
        if model_kind is not None and model_kind.validate is not None:
            model_kind.validate(kind, raw)
    except NstdError as exc:
        raise NstdError(f"{exc.message}; nothing was installed") from None


def _load_failure(exc: Exception) -> str:
    """torch.load's failure in a line. Its weights-only message is a page that ends by suggesting
    weights_only=False, which would run the file's code: only the unpickler's own finding is kept."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].splitlines()
        finding = next((line.strip() for line in after if line.strip()), "").split(". ")[0]  # not its advice
        if "global" in finding.lower():
            return f"it holds pickled Python objects, not only tensors; nstd loads weights only: {finding}"
        return f"torch cannot read it: {finding}" if finding else "torch cannot read it"
    return f"torch cannot read it: {describe_failure(exc)}"
