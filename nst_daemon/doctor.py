"""`nstd doctor`: check the installation and say how to fix what is wrong.

One row per check: ok, warning or error, a detail, and the fix for anything that is not ok. The exit status
is 1 when any check is an error. A config error stops only the checks that need settings; the GPU, driver
and library checks still run. The bot token never appears in the output: every line is scrubbed of it.

Probes live in `nst_daemon.gpu` (nvidia-smi through PATH, torch and onnxruntime facts) and in the small
functions of doctor_telegram (`telegram_get_me`) and here (`systemd_state`), so tests can replace each one.
The GPU rows are doctor_gpu's, the Telegram rows doctor_telegram's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nst_daemon.config import ConfigError, Settings, load_settings, mask_token
from nst_daemon.errors import NstdError
from nst_daemon.logs import redactor

log = logging.getLogger(__name__)

# A check's row (doctor_check) and the GPU, driver, PyTorch and ONNX Runtime checks (doctor_gpu), re-exported.
from nst_daemon.doctor_check import Check as Check  # noqa: E402
from nst_daemon.doctor_check import Status as Status  # noqa: E402
from nst_daemon.doctor_check import error, ok, warning  # noqa: E402
from nst_daemon.doctor_gpu import CPU_NST_COST_S as CPU_NST_COST_S  # noqa: E402
from nst_daemon.doctor_gpu import check_cpu_nst as check_cpu_nst  # noqa: E402
from nst_daemon.doctor_gpu import check_gpu_stack as check_gpu_stack  # noqa: E402
from nst_daemon.doctor_gpu import check_onnxruntime as check_onnxruntime  # noqa: E402
from nst_daemon.doctor_gpu import check_torch as check_torch  # noqa: E402
from nst_daemon.doctor_telegram import check_token, check_users  # noqa: E402
from nst_daemon.doctor_telegram import telegram_get_me as telegram_get_me  # noqa: E402

SERVICE_USER = "nstd"  # the system user of systemd/nstd.service
SERVICE_NAME = "nstd.service"
LOW_DISK_BYTES = 2 * 1024**3


# --- entry point ---


def run(config_path: Path | None, console: Console) -> int:
    """Run every check, print the table, return 1 when any check is an error."""
    checks = collect(config_path)
    print_report(checks, console)
    return 1 if any(check.status == "error" for check in checks) else 0


def collect(config_path: Path | None) -> list[Check]:
    """All checks in display order, with the bot token scrubbed from every text."""
    checks: list[Check] = []
    secrets: list[str] = []
    settings: Settings | None = None
    try:
        settings = load_settings(config_path)
        where = str(settings.source) if settings.source else "no config file found; built-in defaults"
        checks.append(ok("config", where))
    except ConfigError as exc:
        checks.append(
            error(
                "config",
                exc.message,
                "fix the named key or file, or pass --config PATH; checks that need the config were skipped",
            )
        )

    if settings is not None:
        # Known before any check runs, so that even a check that crashes cannot print it.
        with contextlib.suppress(ConfigError):
            secrets.append(settings.telegram_token() or "")
            redactor.add(secrets[-1])  # and out of log lines (`nstd --debug doctor` logs tracebacks)
        token_check, token = guarded("telegram token", lambda: check_token(settings), (None,))
        checks.append(token_check)
        checks.append(guarded("allowed users", lambda: check_users(settings, bot_enabled=bool(token))))

    checks.extend(guarded("GPU", lambda: check_gpu_stack(settings), as_list=True))

    if settings is not None:
        checks.append(guarded("models", lambda: check_models(settings)))
        checks.extend(guarded("folders", lambda: check_folders(settings), as_list=True))
        checks.append(guarded("free disk", lambda: check_disk(settings)))
        checks.append(guarded("cluster", lambda: check_cluster(settings)))
    checks.append(guarded("systemd service", check_systemd))
    return [scrub(check, secrets) for check in checks]


def guarded(name: str, probe: Callable[[], Any], extra: tuple = (), as_list: bool = False) -> Any:
    """Run one check; a crash inside it becomes an error row instead of ending the whole report."""
    try:
        return probe()
    except Exception as exc:
        log.debug("the %s check failed", name, exc_info=True)
        row = error(
            name,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "please report this as a bug, with the output of `nstd --debug doctor`",
        )
        if as_list:
            return [row]
        return (row, *extra) if extra else row


# --- models, folders, disk ---


def check_models(settings: Settings) -> Check:
    """The catalog's cheap install check (manifest entry, files, sizes; no hashing, see catalog)."""
    from nst_daemon import catalog

    try:
        statuses = catalog.installed_status(settings)
    except NstdError as exc:  # no catalog, or an unreadable manifest
        return error(
            "models",
            exc.message,
            "fix or remove the file named; `nstd models pull --force` rewrites a broken manifest",
        )
    where = f"in {settings.paths.models_dir}"
    broken = [status for status in statuses if not status.installed and status.problem]
    missing = [status.name for status in statuses if not status.installed and not status.problem]
    installed = [status for status in statuses if status.installed]
    if broken:
        names = " ".join(status.name for status in broken)
        problems = "; ".join(f"{status.name}: {status.problem}" for status in broken)
        return error(
            "models", f"installed but not usable: {problems} ({where})", f"`nstd models pull --force {names}`"
        )
    if not missing:
        verified = sum(status.verified for status in installed)
        return ok(
            "models",
            f"all {len(installed)} installed {where} ({verified} checked against the catalog's sha256)",
        )
    names = " ".join(missing) if installed else ""
    pull = f"`nstd models pull{' ' + names if names else ''}` (service: `sudo -u nstd nstd models pull`)"
    if not installed:
        return error("models", f"no models installed {where}", pull)
    backbone = [status.name for status in statuses if status.kind == "vgg19" and status.name in missing]
    if backbone:
        # A warning, not an error: the CycleGAN styles work, and on a CPU-only machine leaving VGG19 out
        # is the default (models.pull_on_start = "auto").
        return warning(
            "models",
            f"{backbone[0]} is not installed, so multi-style NST cannot run; missing: {', '.join(missing)} "
            f"({where})",
            pull,
        )
    return warning(
        "models",
        f"missing styles: {', '.join(missing)} ({where}); installed: {', '.join(s.name for s in installed)}",
        pull,
    )


def folders_to_check(settings: Settings) -> list[tuple[str, Path]]:
    folders = [("state folder", settings.paths.state_dir), ("models folder", settings.paths.models_dir)]
    if settings.store.backend == "local":
        folders.append(("object store", settings.store_root))
    if settings.watch.enabled:
        folders.append(("watched folder", settings.watch.dir))
    return folders


def check_folders(settings: Settings) -> list[Check]:
    return [check_writable(label, path) for label, path in folders_to_check(settings)]


def nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable(label: str, path: Path) -> Check:
    """Write and delete a temporary file (as root, permission bits prove nothing); create nothing else."""
    fix = (
        f"choose another folder in the config, or make {path} writable for the user that runs nstd "
        f"(service: `sudo chown -R {SERVICE_USER}:{SERVICE_USER} {path}`; outside /var/lib/nstd also add "
        "ReadWritePaths= with `systemctl edit nstd`)"
    )
    target = path
    note = ""
    if not path.exists():
        target = nearest_existing(path)
        note = f" (does not exist yet; nstd creates it in {target})"
    if not target.is_dir():
        return error(label, f"{path} cannot be a folder: {target} is not a directory", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".nstd-doctor-"):
            pass
    except OSError as exc:
        return error(label, f"cannot write in {target}: {exc.strerror or exc}", fix)
    owner_problem = foreign_owner(target) if target == path else None
    if owner_problem:
        return warning(
            label, f"{path} {owner_problem}", f"`sudo chown -R {SERVICE_USER}:{SERVICE_USER} {path}`"
        )
    return ok(label, f"{path} is writable{note}")


def foreign_owner(path: Path) -> str | None:
    """When run as root next to the service: a folder the service user does not own breaks the service."""
    if os.geteuid() != 0:
        return None
    try:
        service = pwd.getpwnam(SERVICE_USER)
        owner = path.stat().st_uid
    except (KeyError, OSError):
        return None
    if owner in (service.pw_uid,) or not _under_service_state(path):
        return None
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    return f"is owned by {name}, not by the service user {SERVICE_USER}, which cannot write there"


def _under_service_state(path: Path) -> bool:
    state = Path("/var/lib") / SERVICE_USER
    resolved = path.resolve()
    return resolved == state or state in resolved.parents


def check_disk(settings: Settings) -> Check:
    where = nearest_existing(settings.paths.state_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return warning(
            "free disk", f"cannot measure {where}: {exc.strerror}", "check that the state folder exists"
        )
    free_gib = usage.free / 1024**3
    detail = f"{free_gib:.1f} GiB free at {where}"
    if usage.free < LOW_DISK_BYTES:
        return warning(
            "free disk",
            detail,
            "free some space, or lower store.retention_days so old results are deleted sooner",
        )
    return ok("free disk", detail)


# --- systemd ---


# --- cluster ---


def check_cluster(settings: Settings) -> Check:
    """With cluster.backend = "ray": Ray installed, the head answering, a token, a store replicas can read.
    It probes without joining (joining takes seconds); the daemon's start-up counts the nodes."""
    cluster = settings.cluster
    if cluster.backend == "local":
        return ok("cluster", 'engines run on this machine (cluster.backend = "local")')
    from nst_daemon.cluster import connection

    where = cluster.address or "a private single-node Ray started by nstd"
    try:
        connection.probe(settings)
    except NstdError as exc:
        return error(
            "cluster",
            exc.message,
            "start the head (`ray start --head`), check cluster.address and the firewall (docs/cluster.md)",
        )
    if problem := connection.store_problem(settings):
        return error("cluster", problem, 'set [store] backend = "s3" with MinIO or S3 (docs/cluster.md)')
    token = connection.token_source(cluster)
    if cluster.address and not token:
        return warning(
            "cluster",
            f"Ray at {where}; no Ray token found (Ray 2.60 asks for one by default)",
            "copy the head's ~/.ray/auth_token and set cluster.auth_token_file (docs/cluster.md)",
        )
    return ok("cluster", f"Ray at {where}" + (f"; token from {token}" if token else ""))


def systemd_state(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[str, str] | None:
    """(is-enabled, is-active) of the unit, or None when systemd is not running or systemctl is missing."""
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        return None
    answers = []
    for verb in ("is-enabled", "is-active"):
        try:
            done = run(
                ["systemctl", verb, SERVICE_NAME], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        answers.append((done.stdout.strip() or done.stderr.strip() or "unknown").splitlines()[0])
    return answers[0], answers[1]


def check_systemd() -> Check:
    name = "systemd service"
    if os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"):
        return ok(name, "running under systemd")
    state = systemd_state()
    if state is None:
        return ok(name, "systemd is not running here (fine for `scripts/run` and containers)")
    enabled, active = state
    if enabled in ("enabled", "enabled-runtime", "static", "alias", "indirect", "linked"):
        return ok(name, f"{SERVICE_NAME} is {enabled} and {active}")
    if enabled in ("disabled",):
        return warning(
            name,
            f"{SERVICE_NAME} is installed but disabled ({active}): it will not start at boot",
            "`sudo systemctl enable --now nstd`",
        )
    return ok(name, f"{SERVICE_NAME} is not installed (optional: `sudo scripts/install-service`)")


# --- output ---

STYLES = {"ok": "green", "warning": "yellow", "error": "bold red"}


def scrub(check: Check, secrets: list[str]) -> Check:
    detail, fix = check.detail, check.fix
    for secret in secrets:
        if secret:
            detail = detail.replace(secret, mask_token(secret))
            fix = fix.replace(secret, mask_token(secret))
    return replace(check, detail=detail, fix=fix)


def print_report(checks: list[Check], console: Console) -> None:
    table = Table(title="nstd doctor", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in checks:
        style = STYLES[check.status]
        table.add_row(
            escape(check.name), f"[{style}]{check.status}[/]", escape(check.detail), escape(check.fix)
        )
    console.print(table)
    errors = sum(check.status == "error" for check in checks)
    warnings = sum(check.status == "warning" for check in checks)
    if errors:
        console.print(f"[bold red]{errors} error(s)[/], {warnings} warning(s): fix the errors first.")
    elif warnings:
        console.print(f"[green]no errors[/], {warnings} warning(s).")
    else:
        console.print("[green]all checks passed.[/]")
