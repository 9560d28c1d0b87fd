"""`nstd models verify` and `nstd models list`: what is installed, re-hashed or shown against the catalog.
Split from catalog.py (pull, import, install), which re-exports both."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from nst_daemon import download
from nst_daemon.catalog_file import CatalogEntry, get_catalog
from nst_daemon.catalog_install import _PINNED_LABELS, _lock_path, _sha256_file, validate_checkpoint
from nst_daemon.config import Settings
from nst_daemon.engines import registry
from nst_daemon.errors import NstdError
from nst_daemon.manifest import InstalledModel, read_manifest

# `models list`'s pinned column, which must fit 80 columns; the README explains each word.
_PINNED_SHORT = {"catalog": "catalog", "tofu": "tofu", "import": "import"}


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
    from nst_daemon.engines.ort_session import check_session

    try:
        check_session(path, log_severity=4)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{path.name} does not load in ONNX Runtime: {first_line}"
    return None


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
    from nst_daemon.catalog import installed_status  # catalog.py imports this module at its end

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
        table.add_row(entry.name, entry.style or _serves(entry.kind), installed, size, digest)
    console.print(table)
    for problem in problems:
        console.print(escape(problem), highlight=False)


def _serves(kind: str) -> str:
    """`models list`'s style column for a model that is not a style itself: the engine it serves."""
    model_kind = registry.model_kind(kind)
    return model_kind.serves if model_kind is not None else ""
