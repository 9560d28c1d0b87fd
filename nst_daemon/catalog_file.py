"""The model catalog file (models/catalog.toml, or models.catalog): its entries, where it is, how it is
read. The one list of models and of the pretrained styles (an entry's `style`, `label`, `description`);
torch-free and light, so the bot and the folder read it too. Pull, import and verify are catalog.py's."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import nst_daemon
from nst_daemon.config import Settings
from nst_daemon.engines import registry
from nst_daemon.errors import NstdError
from nst_daemon.style_names import normalize_style

SIZE_CAP_FACTOR = 1.5


class CatalogError(NstdError):
    """The catalog file is missing or malformed."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # a kind an engine plugin declares (engines/registry.py)
    style: str
    url: str
    file: str
    size: int
    sha256: str | None = None
    size_exact: bool = True
    source: str = ""
    license: str = ""
    label: str = ""  # a style's user-facing name ("Van Gogh"); the style key when empty
    description: str = ""  # a style's line in the bot's /styles

    @property
    def max_bytes(self) -> int:
        return int(self.size * SIZE_CAP_FACTOR)

    @property
    def runnable(self) -> str:
        """The file the engine loads: the exported ONNX for a kind that is exported (CycleGAN, AdaIN), else
        the checkpoint itself (VGG19)."""
        model_kind = registry.model_kind(self.kind)
        return f"{self.name}.onnx" if model_kind is not None and model_kind.export else self.file

    @property
    def files(self) -> list[str]:
        # The checkpoint first, then what is derived from it.
        return [self.file] if self.runnable == self.file else [self.file, self.runnable]

    def url_for(self, mirror: str | None) -> str:
        """A mirror serves the catalog's file names under one base URL."""
        return f"{mirror.rstrip('/')}/{self.file}" if mirror else self.url


# --- the catalog --------------------------------------------------------------------------------------------


def default_catalog_path() -> Path:
    return Path(nst_daemon.__file__).resolve().parent.parent / "models" / "catalog.toml"


def catalog_path(settings: Settings) -> Path:
    path = settings.models.catalog or default_catalog_path()
    if not path.is_file():
        hint = "" if settings.models.catalog else " (nstd looks for models/catalog.toml next to its package)"
        raise CatalogError(
            f"model catalog {path} not found{hint}; set models.catalog in the config to a catalog.toml"
        )
    return path


def load_catalog(path: Path) -> dict[str, CatalogEntry]:
    """Catalog entries by name, in file order; CatalogError names the file, the entry and the field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"model catalog {path} is not valid TOML: {exc}") from None
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise CatalogError(f"model catalog {path} has no [[models]] entries")
    entries: dict[str, CatalogEntry] = {}
    for index, item in enumerate(models):
        entry = _parse_entry(path, index, item)
        if entry.name in entries:
            raise CatalogError(f"model catalog {path}: model {entry.name} appears twice")
        entries[entry.name] = entry
    return entries


def _parse_entry(path: Path, index: int, item: object) -> CatalogEntry:
    where = f"model catalog {path}: models[{index}]"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a table")
    known = {"name", "kind", "style", "url", "file", "size", "sha256", "size_exact", "source", "license"}
    known |= {"label", "description"}
    for key in item:
        if key not in known:
            raise CatalogError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in ("name", "kind", "url", "file", "size"):
        if key not in item:
            raise CatalogError(f"{where}: missing key {key!r}")
    if item.get("name"):
        where = f"model catalog {path}: {item['name']}"
    for key in (
        "name",
        "kind",
        "style",
        "url",
        "file",
        "sha256",
        "source",
        "license",
        "label",
        "description",
    ):
        if key in item and not isinstance(item[key], str):
            raise CatalogError(f"{where}: {key} must be a string")
    kinds = [kind.name for plugin in registry.plugins() for kind in plugin.model_kinds]
    if item["kind"] not in kinds:
        raise CatalogError(f"{where}: kind must be one of {', '.join(kinds)} (got {item['kind']!r})")
    if item.get("style") and normalize_style(item["style"]) != item["style"]:
        raise CatalogError(f"{where}: style must be written as {normalize_style(item['style'])!r}")
    if not isinstance(item["size"], int) or isinstance(item["size"], bool) or item["size"] <= 0:
        raise CatalogError(f"{where}: size must be a positive number of bytes")
    name, file = item["name"], item["file"]
    for key, value in (("name", name), ("file", file)):
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise CatalogError(f"{where}: {key} must be a plain file name (got {value!r})")
    sha256 = item.get("sha256") or None
    if sha256 is not None:
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise CatalogError(f"{where}: sha256 must be 64 hex digits")
    return CatalogEntry(
        name=name,
        kind=item["kind"],
        style=item.get("style", ""),
        url=item["url"],
        file=file,
        size=item["size"],
        sha256=sha256,
        size_exact=bool(item.get("size_exact", True)),
        source=item.get("source", ""),
        license=item.get("license", ""),
        label=item.get("label", ""),
        description=item.get("description", ""),
    )


def get_catalog(settings: Settings) -> dict[str, CatalogEntry]:
    return load_catalog(catalog_path(settings))
