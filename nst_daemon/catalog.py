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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from nst_daemon import download

# The catalog file itself (its entries, where it is, how it is read) is catalog_file's; re-exported here.
from nst_daemon.catalog_file import CatalogEntry as CatalogEntry
from nst_daemon.catalog_file import CatalogError as CatalogError
from nst_daemon.catalog_file import catalog_path as catalog_path
from nst_daemon.catalog_file import default_catalog_path as default_catalog_path
from nst_daemon.catalog_file import get_catalog as get_catalog
from nst_daemon.catalog_file import load_catalog as load_catalog

# `models verify` and `models list` are catalog_verify's, `models import` catalog_import's, the install step
# catalog_install's (re-exported).
from nst_daemon.catalog_install import _PINNED_LABELS, _install, _lock_path
from nst_daemon.catalog_install import LOCK_DIR as LOCK_DIR
from nst_daemon.catalog_install import validate_checkpoint as validate_checkpoint
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.fsutil import ensure_dir
from nst_daemon.manifest import MANIFEST_NAME, InstalledModel, read_manifest
from nst_daemon.wording import plural


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


def _ensure_models_dir(settings: Settings) -> Path:
    return ensure_dir(settings.paths.models_dir, "the models directory (paths.models_dir)")


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


from nst_daemon.catalog_import import import_file as import_file  # noqa: E402
from nst_daemon.catalog_verify import _check_onnx_loads as _check_onnx_loads  # noqa: E402
from nst_daemon.catalog_verify import print_list as print_list  # noqa: E402
from nst_daemon.catalog_verify import verify_all as verify_all  # noqa: E402
