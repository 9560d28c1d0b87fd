"""The installed-model manifest: `<models_dir>/manifest.json`, the single source of truth for what runs.

A model is installed only when its manifest entry exists and names its runnable file. The manifest is
rewritten atomically (temporary file, fsync, rename), so the daemon never sees a half-installed model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nst_daemon.errors import ModelNotInstalled, NstdError
from nst_daemon.fsutil import write_atomic

MANIFEST_NAME = "manifest.json"


@dataclass
class InstalledModel:
    name: str
    kind: str  # vgg19 | cyclegan
    sha256: str  # digest of the downloaded or imported checkpoint
    size: int
    source: str  # URL, or file:// path for an import
    installed_at: float
    files: list[str]  # every file of this model, relative to models_dir
    runnable: str  # the file the engine loads, relative to models_dir
    pinned: str = "catalog"  # catalog (sha256 from the catalog) | tofu (trust on first use) | import
    notes: list[str] = field(default_factory=list)
    # sha256 of each file built at install (the ONNX export), so `nstd models verify` can re-hash it too.
    # Empty in manifests written before nstd recorded it.
    built_sha256: dict[str, str] = field(default_factory=dict)


def manifest_path(models_dir: Path) -> Path:
    return models_dir / MANIFEST_NAME


def read_manifest(models_dir: Path) -> dict[str, InstalledModel]:
    path = manifest_path(models_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NstdError(
            f"model manifest {path} is unreadable ({exc}); re-run `nstd models pull --force`"
        ) from None
    return {name: InstalledModel(**entry) for name, entry in raw.get("models", {}).items()}


def write_manifest(models_dir: Path, models: dict[str, InstalledModel]) -> None:
    """Replace the manifest atomically. Callers hold the manifest lock (see catalog)."""
    payload = {"version": 1, "models": {name: asdict(model) for name, model in sorted(models.items())}}
    write_atomic(manifest_path(models_dir), json.dumps(payload, indent=2).encode())


def runnable_path(models_dir: Path, name: str) -> Path:
    """The file an engine loads for `name`; ModelNotInstalled when it is absent."""
    entry = read_manifest(models_dir).get(name)
    if entry is None:
        raise ModelNotInstalled(name)
    path = models_dir / entry.runnable
    if not path.is_file():
        raise ModelNotInstalled(name)
    return path
