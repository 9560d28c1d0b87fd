"""The model catalog and what is done with it: pull, import, verify, list.

Install protocol, the same for pull and import, in this order so that a failure at any step leaves the
previous state and the daemon never sees a half-installed model:
1. under the per-file lock, stage every file under a temporary name in models_dir (same filesystem, so the
   later rename is atomic): a download as `<file>.part`, an import's copy as `<file>.import.part`, the
   ONNX export as `<name>.onnx.part`;
2. check the digest, load with `torch.load(weights_only=True)` and validate keys and shapes, export ONNX
   with its parity check (CycleGAN);
3. rename the staged files into place;
4. rewrite the manifest last, under the manifest lock. The daemon reads only the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

import nst_daemon
from nst_daemon import download
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError, describe_failure
from nst_daemon.fsutil import ensure_dir, fsync_dir, sha256_file
from nst_daemon.manifest import MANIFEST_NAME, InstalledModel, read_manifest, write_manifest
from nst_daemon.wording import plural

KINDS = ("vgg19", "cyclegan", "adain_vgg", "adain_decoder")
SIZE_CAP_FACTOR = 1.5
LOCK_DIR = ".locks"
_HASH_CHUNK = 1 << 20
_PINNED_LABELS = {"catalog": "catalog sha256", "tofu": "first use (tofu)", "import": "import"}
# The same in `models list`, where the column must fit 80 columns; the README explains each word.
_PINNED_SHORT = {"catalog": "catalog", "tofu": "tofu", "import": "import"}
# `models list`'s style column for the models that are not a style themselves: the engine they serve.
_ENGINE_OF_KIND = {"vgg19": "(NST)", "adain_vgg": "(AdaIN)", "adain_decoder": "(AdaIN)"}


class CatalogError(NstdError):
    """The catalog file is missing or malformed."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str  # one of KINDS
    style: str
    url: str
    file: str
    size: int
    sha256: str | None = None
    size_exact: bool = True
    source: str = ""
    license: str = ""

    @property
    def max_bytes(self) -> int:
        return int(self.size * SIZE_CAP_FACTOR)

    @property
    def runnable(self) -> str:
        """The file the engine loads: the checkpoint itself for VGG19, the exported ONNX for the others."""
        return self.file if self.kind == "vgg19" else f"{self.name}.onnx"

    @property
    def files(self) -> list[str]:
        # The checkpoint first, then what is derived from it.
        return [self.file] if self.runnable == self.file else [self.file, self.runnable]

    def url_for(self, mirror: str | None) -> str:
        """A mirror serves the catalog's file names under one base URL."""
        return f"{mirror.rstrip('/')}/{self.file}" if mirror else self.url


@dataclass(frozen=True)
class ModelStatus:
    """What the daemon and `nstd doctor` need to know about one catalog model, without hashing anything."""

    name: str
    kind: str
    style: str
    installed: bool  # manifest entry present, its files present, checkpoint size as recorded
    verified: bool  # installed and its digest matched the catalog's published sha256
    pinned: str | None  # catalog | tofu | import; None when not installed
    runnable: Path | None
    problem: str | None = None  # why a model with a manifest entry does not count as installed


@dataclass
class _Outcome:
    name: str
    result: str  # installed | up to date | failed
    detail: str = ""
    sha256: str = ""
    unreachable: CatalogEntry | None = None  # failed because its server could not be reached


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
    for key in item:
        if key not in known:
            raise CatalogError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key in ("name", "kind", "url", "file", "size"):
        if key not in item:
            raise CatalogError(f"{where}: missing key {key!r}")
    if item.get("name"):
        where = f"model catalog {path}: {item['name']}"
    for key in ("name", "kind", "style", "url", "file", "sha256", "source", "license"):
        if key in item and not isinstance(item[key], str):
            raise CatalogError(f"{where}: {key} must be a string")
    if item["kind"] not in KINDS:
        raise CatalogError(f"{where}: kind must be one of {', '.join(KINDS)} (got {item['kind']!r})")
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
    )


def get_catalog(settings: Settings) -> dict[str, CatalogEntry]:
    return load_catalog(catalog_path(settings))


def _select(catalog: dict[str, CatalogEntry], names: Iterable[str]) -> list[CatalogEntry]:
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in catalog]
    if unknown:
        raise NstdError(f"unknown model {', '.join(unknown)}; the catalog has: {', '.join(catalog)}")
    return [catalog[name] for name in wanted] if wanted else list(catalog.values())


# --- status -------------------------------------------------------------------------------------------------


def installed_status(settings: Settings) -> list[ModelStatus]:
    """Every catalog model with whether it is installed; cheap (no hashing), for the daemon and doctor."""
    models_dir = settings.paths.models_dir
    manifest = read_manifest(models_dir)
    statuses = []
    for entry in get_catalog(settings).values():
        record = manifest.get(entry.name)
        problem = _install_problem(entry, record, models_dir) if record else None
        installed = record is not None and problem is None
        statuses.append(
            ModelStatus(
                name=entry.name,
                kind=entry.kind,
                style=entry.style,
                installed=installed,
                verified=installed and record is not None and record.pinned == "catalog",
                pinned=record.pinned if record else None,
                runnable=models_dir / record.runnable if installed and record else None,
                problem=problem,
            )
        )
    return statuses


def _install_problem(entry: CatalogEntry, record: InstalledModel | None, models_dir: Path) -> str | None:
    """Why `record` does not count as a current install of `entry`, or None.

    Deliberately no re-hash: pull must be cheap to re-run, and 575 MB of VGG19 takes seconds to hash. A
    changed size or a missing file is what an interrupted copy or a stray edit leaves; `nstd models verify`
    is the full check.
    """
    if record is None:
        return "not installed"
    for name in record.files:
        if not (models_dir / name).is_file():
            return f"{name} is missing"
    if not (models_dir / record.runnable).is_file():
        return f"{record.runnable} is missing"
    if record.kind != entry.kind:
        return f"installed as a {record.kind} model, the catalog says {entry.kind}"
    if entry.file in record.files:
        size = (models_dir / entry.file).stat().st_size
        if size != record.size:
            return f"{entry.file} is {size} bytes, {record.size} were installed"
    if entry.sha256 and record.pinned != "import" and record.sha256 != entry.sha256:
        return "the catalog's sha256 changed since it was installed"
    return None


# --- pull ---------------------------------------------------------------------------------------------------


def pull(
    settings: Settings,
    names: list[str],
    *,
    mirror: str | None = None,
    force: bool = False,
    console: Console | None = None,
) -> int:
    """Download, verify, validate, convert and install models (all when `names` is empty).

    Continues past a failed model and raises one NstdError naming every failure at the end; 0 on success.
    """
    console = console or Console()
    selected = _select(get_catalog(settings), names)
    base = settings.models.mirror if mirror is None else mirror.strip()
    if base and not base.lower().startswith(("http://", "https://")):
        raise NstdError(f"mirror {base!r} is not an http:// or https:// URL")
    models_dir = _ensure_models_dir(settings)
    remove_stale_temporaries(models_dir, get_catalog(settings), console)

    outcomes: list[_Outcome] = []
    for entry in selected:
        try:
            outcomes.append(_pull_one(entry, models_dir, base, force=force, console=console))
        except Exception as exc:  # one model's failure must not stop the others
            message = exc.message if isinstance(exc, NstdError) else f"{type(exc).__name__}: {exc}"
            if len(selected) > 1:  # a single model's failure is the error line itself
                console.print(f"[red]{escape(entry.name)}: failed:[/] {escape(message)}", highlight=False)
            unreachable = entry if isinstance(exc, download.Unreachable) else None
            outcomes.append(_Outcome(entry.name, "failed", message, unreachable=unreachable))

    if len(outcomes) > 1:
        _print_summary(outcomes, console)
    failed = [outcome for outcome in outcomes if outcome.result == "failed"]
    if not failed:
        return 0
    hint = _offline_hint([outcome.unreachable for outcome in failed if outcome.unreachable])
    if len(failed) == 1 and len(outcomes) == 1:
        raise NstdError(f"{failed[0].name}: {failed[0].detail}{hint}")
    raise NstdError(
        f"{len(failed)} of {len(outcomes)} models failed: "
        + "; ".join(f"{outcome.name} ({outcome.detail})" for outcome in failed)
        + hint
    )


def _offline_hint(entries: list[CatalogEntry]) -> str:
    """What an offline machine can do instead, naming the exact files: a mirror, or `models import`."""
    if not entries:
        return ""
    files = ", ".join(f"{entry.file} ({entry.url})" for entry in entries)
    imports = "; ".join(f"`nstd models import {entry.name} {entry.file}`" for entry in entries)
    return (
        f". Offline? Download {files} on a machine with internet access, then either serve "
        f"{'them' if len(entries) > 1 else 'it'} under one URL with the same file name"
        f"{'s' if len(entries) > 1 else ''} and run `nstd models pull --mirror URL`, or copy "
        f"{'them' if len(entries) > 1 else 'it'} here and run {imports}"
    )


def _pull_one(
    entry: CatalogEntry, models_dir: Path, mirror: str, *, force: bool, console: Console
) -> _Outcome:
    name = entry.name

    def waiting() -> None:
        console.print(f"{name}: another nstd is installing {entry.file}; waiting for it to finish")

    with download.file_lock(_lock_path(models_dir, entry.file), on_wait=waiting):
        # Checked under the lock: a concurrent pull that finished while we waited makes this a no-op.
        record = read_manifest(models_dir).get(name)
        if not force and _install_problem(entry, record, models_dir) is None:
            assert record is not None
            console.print(f"{name}: already installed (sha256 {record.sha256[:12]}); --force downloads again")
            return _Outcome(name, "up to date", "", record.sha256)

        url = entry.url_for(mirror)
        part = models_dir / f"{entry.file}.part"
        if force:
            part.unlink(missing_ok=True)  # --force means from scratch, not a resume of an old attempt
        console.print(escape(f"{name}: downloading {url}"), highlight=False)
        try:
            got = download.fetch(
                url, part, max_bytes=entry.max_bytes, expected_size=entry.size, label=name, console=console
            )
        except download.HttpStatusError as exc:
            if exc.status == 404:
                raise NstdError(
                    f"not found at {url} (HTTP 404); try --mirror URL or `nstd models import {name} FILE`"
                ) from None
            raise
        if got.resumed_from:
            console.print(f"{name}: resumed an earlier download at {got.resumed_from} bytes")

        pinned = _check_digest(entry, record, got.sha256, part, url, console)
        installed = _install(
            entry,
            models_dir,
            part,
            sha256=got.sha256,
            size=got.size,
            source=url,
            pinned=pinned,
            console=console,
            shown_as=url,
        )
        return _Outcome(name, "installed", _describe_pin(installed), installed.sha256)


def remove_stale_temporaries(models_dir: Path, catalog: dict[str, CatalogEntry], console: Console) -> int:
    """Delete what killed pulls and imports left in `models_dir`; returns how many files went.

    Each model's files are looked at under its own lock, taken without waiting: a file another nstd is
    staging right now is locked and kept. A download's `.part` is kept while its model is not installed,
    because the next pull resumes it; once the model is installed it can only be stale. The ONNX export's
    files and an import's copy are never resumed."""
    removed: list[int] = []

    def remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            removed.append(size)

    manifest = read_manifest(models_dir)
    for entry in catalog.values():
        with download.try_file_lock(_lock_path(models_dir, entry.file)) as locked:
            if not locked:
                continue
            stale = [
                models_dir / f"{entry.file}.import.part",
                *models_dir.glob(f".{entry.runnable}.part-*.tmp"),
            ]
            if entry.runnable != entry.file:
                stale.append(models_dir / f"{entry.runnable}.part")
            if _install_problem(entry, manifest.get(entry.name), models_dir) is None:
                stale.append(models_dir / f"{entry.file}.part")
            for path in stale:
                remove(path)
    with download.try_file_lock(_lock_path(models_dir, "manifest")) as locked:
        if locked:  # write_atomic's temporary file for a manifest that was never renamed into place
            for path in models_dir.glob(f".{MANIFEST_NAME}.*.tmp"):
                remove(path)
    if removed:
        console.print(
            f"removed {len(removed)} stale temporary file{plural(len(removed))} ({decimal(sum(removed))}) "
            f"left by an interrupted pull or import",
            highlight=False,
        )
    return len(removed)


def _check_digest(
    entry: CatalogEntry,
    record: InstalledModel | None,
    actual: str,
    part: Path,
    url: str,
    console: Console,
) -> str:
    """The pin kind for a downloaded file; an error, with the download deleted, when its digest is wrong."""
    if entry.sha256:
        if actual != entry.sha256:
            part.unlink(missing_ok=True)
            raise NstdError(
                f"sha256 mismatch for {url}: expected {entry.sha256}, got {actual}; "
                "the download was deleted and nothing was installed"
            )
        console.print(f"{entry.name}: sha256 matches the catalog")
        return "catalog"
    if record is not None and record.pinned == "tofu" and record.sha256 != actual:
        # The point of pinning on first use: a later download that differs is refused, not silently taken.
        part.unlink(missing_ok=True)
        raise NstdError(
            f"sha256 of the new download from {url} is {actual}, but {record.sha256} was pinned on first "
            f"use; nothing was changed. If you trust the new file, install it with "
            f"`nstd models import {entry.name} FILE`"
        )
    if record is None or record.pinned != "tofu":
        console.print(
            f"[yellow]{entry.name}: no sha256 is published for this file; trusting it on first use and "
            f"pinning sha256 {actual}[/] (later pulls and `nstd models verify` compare against it)",
            highlight=False,
        )
    return "tofu"


# --- import -------------------------------------------------------------------------------------------------


def import_file(
    settings: Settings, name: str, file: Path, *, console: Console | None = None
) -> InstalledModel:
    """Validate, convert and install a checkpoint from a local file, the same way pull does."""
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


# --- install ------------------------------------------------------------------------------------------------


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
    if kind == "cyclegan":
        from nst_daemon.engines import cyclegan

        return cyclegan.export_onnx(checkpoint, onnx_path)
    from nst_daemon.engines import adain_net

    return adain_net.export_onnx(kind, checkpoint, onnx_path)


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
    try:
        if kind == "vgg19":
            from nst_daemon.engines.vgg import validate_vgg_state_dict

            validate_vgg_state_dict(raw)
        elif kind in ("adain_vgg", "adain_decoder"):
            from nst_daemon.engines.adain_net import clean_state_dict

            clean_state_dict(kind, raw)
        else:
            from nst_daemon.engines.cyclegan import clean_generator_state_dict

            clean_generator_state_dict(raw)
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


def _ensure_models_dir(settings: Settings) -> Path:
    return ensure_dir(settings.paths.models_dir, "the models directory (paths.models_dir)")


def _lock_path(models_dir: Path, file: str) -> Path:
    # Lock files live apart from the models: they are never deleted (see download.file_lock).
    return models_dir / LOCK_DIR / f"{file}.lock"


# --- verify -------------------------------------------------------------------------------------------------


def verify_all(settings: Settings, console: Console) -> int:
    """Re-hash and re-validate every installed model; 1 when anything is wrong or nothing is installed."""
    models_dir = settings.paths.models_dir
    catalog = get_catalog(settings)
    manifest = read_manifest(models_dir)
    if not manifest:
        console.print("no models installed: run `nstd models pull`")
        return 1
    problems: dict[str, str] = {}
    for name, record in manifest.items():
        lock_name = _checkpoint_file(record) or record.runnable
        with download.file_lock(_lock_path(models_dir, lock_name)):
            problem = _verify_one(record, catalog.get(name), models_dir)
        if problem:
            problems[name] = problem
            console.print(f"[red]{escape(name)}: FAILED:[/] {escape(problem)}", highlight=False)
        else:
            console.print(
                f"[green]{name}: ok[/] (sha256 {record.sha256[:12]}, "
                f"pinned: {_PINNED_LABELS.get(record.pinned, record.pinned)})",
                highlight=False,
            )
    if problems:
        console.print(
            f"[red]verify failed for {len(problems)} of {len(manifest)} models:[/] {', '.join(problems)}; "
            "re-install with `nstd models pull --force NAME` or `nstd models import NAME FILE`",
            highlight=False,
        )
        return 1
    return 0


def _verify_one(record: InstalledModel, entry: CatalogEntry | None, models_dir: Path) -> str | None:
    for name in [*record.files, record.runnable]:
        if not (models_dir / name).is_file():
            return f"{name} is missing"
    checkpoint_name = _checkpoint_file(record)
    if checkpoint_name is None:
        return "the manifest records no checkpoint file to check"
    checkpoint = models_dir / checkpoint_name
    actual = _sha256_file(checkpoint)
    if actual != record.sha256:
        return f"{checkpoint.name} has sha256 {actual}, expected {record.sha256} (pinned: {record.pinned})"
    if record.pinned == "catalog" and entry is not None and entry.sha256 and entry.sha256 != actual:
        return f"{checkpoint.name} has sha256 {actual}, but the catalog now lists {entry.sha256}"
    try:
        validate_checkpoint(record.kind, checkpoint)
    except NstdError as exc:
        return exc.message.removesuffix("; nothing was installed")
    if record.runnable.endswith(".onnx") and (problem := _check_onnx_loads(models_dir / record.runnable)):
        return problem
    for name, expected in record.built_sha256.items():
        # A flipped bit in the exported weights still loads; only the digest tells.
        if (actual := _sha256_file(models_dir / name)) != expected:
            return f"{name} has sha256 {actual}, expected {expected} (built at install)"
    return None


def _checkpoint_file(record: InstalledModel) -> str | None:
    """The recorded file whose digest the manifest holds: the checkpoint, not a derived ONNX file."""
    return next((name for name in record.files if not name.endswith(".onnx")), None)


def _check_onnx_loads(path: Path) -> str | None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{path.name} does not load in ONNX Runtime: {first_line}"
    return None


def _sha256_file(path: Path) -> str:
    return sha256_file(path, _HASH_CHUNK)


# --- list ---------------------------------------------------------------------------------------------------


def print_list(settings: Settings, console: Console) -> None:
    """A table of catalog models: installed or not (and how it is pinned), size, short sha256.

    It fits 80 columns without cutting a value: no cell wraps, and a problem with an install, which can
    be long, is a line of its own under the table."""
    models_dir = settings.paths.models_dir
    catalog = get_catalog(settings)
    manifest = read_manifest(models_dir)
    table = Table(
        title=f"models in {models_dir}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
        pad_edge=False,
    )  # fmt: skip
    for column in ("name", "style", "installed", "size", "sha256"):
        table.add_column(column, no_wrap=True)
    problems: list[str] = []
    statuses = {status.name: status for status in installed_status(settings)}
    for entry in catalog.values():
        status = statuses[entry.name]
        record = manifest.get(entry.name)
        if status.installed and record is not None:
            installed = f"[green]yes[/], {_PINNED_SHORT.get(record.pinned, record.pinned)}"
            size, digest = decimal(record.size), record.sha256[:12]
        else:
            installed = "[yellow]no, see below[/]" if status.problem else "no"
            if status.problem:
                problems.append(f"{entry.name}: {status.problem}; `nstd models pull {entry.name}` fixes it")
            approx = "" if entry.size_exact else "~"
            size, digest = approx + decimal(entry.size), (entry.sha256 or "")[:12] or "-"
        table.add_row(entry.name, entry.style or _ENGINE_OF_KIND.get(entry.kind, ""), installed, size, digest)
    console.print(table)
    for problem in problems:
        console.print(escape(problem), highlight=False)


def _print_summary(outcomes: list[_Outcome], console: Console) -> None:
    table = Table(title="summary", title_justify="left")
    for column in ("model", "result", "sha256", "detail"):
        table.add_column(column, no_wrap=column in ("model", "sha256"))
    colours = {"installed": "green", "up to date": "green", "failed": "red"}
    for outcome in outcomes:
        colour = colours.get(outcome.result, "white")
        table.add_row(
            outcome.name,
            f"[{colour}]{outcome.result}[/]",
            outcome.sha256[:12] or "-",
            escape(outcome.detail),
        )
    console.print(table)


def _describe_pin(record: InstalledModel) -> str:
    return f"pinned: {_PINNED_LABELS.get(record.pinned, record.pinned)}"


__all__ = [
    "CatalogEntry",
    "CatalogError",
    "ModelStatus",
    "catalog_path",
    "get_catalog",
    "import_file",
    "installed_status",
    "load_catalog",
    "print_list",
    "pull",
    "validate_checkpoint",
    "verify_all",
]
