"""`nstd doctor`: check the installation and say how to fix what is wrong.

One row per check: ok, warning or error, a detail, and the fix for anything that is not ok. The exit status
is 1 when any check is an error. A config error stops only the checks that need settings; the GPU, driver
and library checks still run. The bot token never appears in the output: every line is scrubbed of it.

Probes live in `nst_daemon.gpu` (nvidia-smi through PATH, torch and onnxruntime facts) and in the small
functions here (`telegram_get_me`, `systemd_state`), so tests can replace each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nst_daemon import gpu
from nst_daemon.config import ConfigError, Settings, load_settings, mask_token
from nst_daemon.errors import NstdError
from nst_daemon.logs import redactor
from nst_daemon.wording import plural

log = logging.getLogger(__name__)
Status = Literal["ok", "warning", "error"]

SERVICE_USER = "nstd"  # the system user of systemd/nstd.service
SERVICE_NAME = "nstd.service"
LOW_VRAM_MIB = 1536  # Gatys NST at 512 px needs about this much on a 4 GB card
LOW_DISK_BYTES = 2 * 1024**3
GET_ME_TIMEOUT_S = 10.0
# CPU seconds of one multi-style NST photo with `nstd stylize --device cpu` on one thread (random-init VGG19:
# the same compute as the real weights; a 1200 x 900 photo), at each preset's own size: one core's time.
# Two quiet cores take about 3/4 of it. fast, balanced and best at 512 px were measured (README, "NST on a
# CPU-only machine"); best at 768 px is best at 512 scaled by its pixel-steps (2.25x).
CPU_NST_COST_S: dict[str, tuple[int, float]] = {
    "fast": (256, 17.0),
    "balanced": (512, 431.0),
    "best": (768, 1600.0),
}
CPU_NST_MEASURED_ON = "on one core; 2 quiet cores take about 3/4 of it, a busy machine longer"
BOTFATHER_FIX = (
    "get the current token from @BotFather (/mybots, choose the bot, API Token) and put it in {where}"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warning(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warning", detail, fix)


def error(name: str, detail: str, fix: str) -> Check:
    return Check(name, "error", detail, fix)


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


# --- Telegram ---


def token_source(settings: Settings) -> str:
    if settings.telegram.token is not None and settings.telegram.token.get_secret_value():
        return "telegram.token"
    if settings.telegram.token_file is not None:
        return f"the token file {settings.telegram.token_file}"
    return "telegram.token_file (or NSTD_TELEGRAM__TOKEN)"


def check_token(settings: Settings) -> tuple[Check, str | None]:
    where = token_source(settings)
    try:
        token = settings.telegram_token()
    except ConfigError as exc:
        token_file = str(settings.telegram.token_file or "")
        if "CREDENTIALS_DIRECTORY" in token_file and not os.environ.get("CREDENTIALS_DIRECTORY"):
            # ${CREDENTIALS_DIRECTORY} exists only inside the service (LoadCredential=).
            return (
                warning(
                    "telegram token",
                    f"{token_file} exists only inside the service",
                    "check the token by hand with `sudo CREDENTIALS_DIRECTORY=/etc/nstd nstd doctor`",
                ),
                None,
            )
        return error(
            "telegram token", exc.message, f"create the file, or {BOTFATHER_FIX.format(where=where)}"
        ), None
    if not token:
        return (
            warning(
                "telegram token",
                "no token: the Telegram bot is off (watched folder and command line only)",
                "create a bot with @BotFather (/newbot) and put its token in telegram.token_file "
                "or NSTD_TELEGRAM__TOKEN",
            ),
            None,
        )
    masked = mask_token(token)
    status, info = telegram_get_me(settings.telegram.api_base, token)
    if status == 200 and isinstance(info, dict):
        username = info.get("username") or info.get("first_name") or "?"
        return ok("telegram token", f"{masked} is @{username} (getMe succeeded)"), token
    if status in (401, 404):
        # The Bot API answers 401 for a revoked or mistyped token and 404 for one it cannot parse.
        return (
            error(
                "telegram token",
                f"Telegram refused the token ({status} {'Unauthorized' if status == 401 else 'Not Found'}): "
                f"{masked}",
                BOTFATHER_FIX.format(where=where),
            ),
            token,
        )
    if status is None:
        return (
            warning(
                "telegram token",
                f"{masked}: cannot reach {settings.telegram.api_base}: {info}",
                "check the network, DNS and firewall (the bot needs outbound HTTPS), or telegram.api_base",
            ),
            token,
        )
    return (
        error(
            "telegram token",
            f"{masked}: the Bot API answered HTTP {status}: {info}",
            "check telegram.api_base; a self-hosted Bot API server must be running and reachable",
        ),
        token,
    )


def telegram_get_me(
    api_base: str, token: str, timeout: float = GET_ME_TIMEOUT_S
) -> tuple[int | None, object]:
    """(HTTP status, result dict or description) of getMe; (None, reason) when the server is unreachable.

    The reason never contains the token: aiohttp puts the URL, and so the token, in some exception texts.
    """
    import aiohttp

    async def call() -> tuple[int | None, object]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"{api_base}/bot{token}/getMe") as response,
        ):
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {}
            if response.status == 200 and isinstance(body, dict) and body.get("ok"):
                return 200, body.get("result") or {}
            description = body.get("description") if isinstance(body, dict) else None
            return response.status, description or response.reason or ""

    try:
        return asyncio.run(call())
    except TimeoutError:
        return None, f"no answer within {timeout:.0f} s"
    except Exception as exc:  # aiohttp.ClientError, OSError, or ValueError for a malformed URL
        reason = str(exc) or type(exc).__name__
        return None, reason.replace(token, mask_token(token))


def check_users(settings: Settings, bot_enabled: bool) -> Check:
    configured = list(settings.telegram.allowed_users)
    try:
        from_db = database_user_count(settings.db_path)
    except sqlite3.Error as exc:
        return warning(
            "allowed users",
            f"cannot read users from {settings.db_path}: {exc}",
            "check the database file's owner and permissions",
        )
    total = len(configured) + from_db
    if total:
        return ok(
            "allowed users", f"{len(configured)} in telegram.allowed_users, {from_db} added with nstd users"
        )
    detail = "no allowed users: nobody can use the bot"
    if not bot_enabled:
        return ok("allowed users", f"{detail} (the bot is off)")
    return warning(
        "allowed users",
        detail,
        "run `nstd users add ID` (as the service user: `sudo -u nstd nstd users add ID`) "
        "or list ids in telegram.allowed_users",
    )


def database_user_count(db_path: Path) -> int:
    """Users in the state database, read without creating or migrating anything.

    Doctor often runs as root: opening read-write could leave root-owned journal files the service
    cannot open. Without a -wal file nothing is pending, so the file can be read as immutable.
    """
    if not db_path.is_file():
        return 0
    wal = db_path.with_name(db_path.name + "-wal")
    mode = "ro" if wal.exists() else "ro&immutable=1"
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode={mode}", uri=True, timeout=5)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "users" not in tables:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    finally:
        conn.close()


# --- GPU, driver, PyTorch, ONNX Runtime ---


def check_gpu_stack(settings: Settings | None) -> list[Check]:
    checks: list[Check] = []
    torch = gpu.torch_facts()
    try:
        gpus = gpu.query_gpus()
    except gpu.GpuProbeError as exc:
        checks.append(
            error(
                "NVIDIA GPU",
                str(exc),
                "the driver is not working: after a driver upgrade reboot; otherwise reinstall the NVIDIA "
                "driver until `nvidia-smi` works",
            )
        )
        gpus = []
        smi_failed = True
    else:
        smi_failed = False
    cc: gpu.CC | None = None
    if gpus:
        cc = min((g.compute_cap for g in gpus if g.compute_cap), default=None) or (
            torch.device_caps[0] if torch.device_caps else None
        )
        described = "; ".join(
            f"{g.name}, compute capability {format_cc_or(g.compute_cap, cc)}, "
            f"{g.memory_total_mib or '?'} MiB, driver {g.driver_version}"
            for g in gpus
        )
        checks.append(ok("NVIDIA GPU", described))
        if not gpu.uvm_device_present():
            checks.append(
                warning(
                    "CUDA device nodes",
                    f"{gpu.UVM_DEVICE} is missing (no CUDA program has run as root since boot)",
                    "`sudo nvidia-modprobe -u -c=0` (the service's ExecStartPre does this at each start)",
                )
            )
    elif torch.device_caps:  # no nvidia-smi on PATH, but torch sees a GPU
        cc = min(torch.device_caps)
        checks.append(
            ok(
                "NVIDIA GPU",
                f"{torch.device_names[0]}, compute capability {gpu.format_cc(cc)} (seen by torch)",
            )
        )
    elif not smi_failed and settings is not None and cpu_by_choice(settings):
        # Both engines are set to the CPU: a missing GPU is what the owner asked for, not a problem.
        checks.append(ok("NVIDIA GPU", "none found; none needed: nst.device and cyclegan.device are cpu"))
    elif not smi_failed:
        checks.append(
            warning(
                "NVIDIA GPU",
                "no NVIDIA GPU found (nvidia-smi is missing or lists none): nstd runs on the CPU, slowly",
                "install the NVIDIA driver so that `nvidia-smi` works, then run `nstd doctor` again; "
                "on a machine without one, set nst.device and cyclegan.device to cpu",
            )
        )
    has_gpu = bool(gpus) or bool(torch.device_caps)
    configured_threads = settings.nst.cpu_threads if settings is not None else 0
    checks.append(check_torch(torch, cc if has_gpu else None, has_gpu, configured_threads))
    checks.append(check_onnxruntime(gpu.ort_facts(), cc if has_gpu else None, has_gpu))
    if gpus and gpus[0].memory_free_mib is not None:
        checks.append(check_vram(gpus, settings))
    if settings is not None and (not has_gpu or settings.nst.device == "cpu"):
        checks.append(check_cpu_nst(settings))
    return checks


def cpu_by_choice(settings: Settings) -> bool:
    return settings.nst.device == "cpu" and settings.cyclegan.device == "cpu"


def check_cpu_nst(settings: Settings) -> Check:
    """What a multi-style NST photo costs on the CPU at each preset, and the settings that finish."""
    name = "NST on the CPU"
    costs = ", ".join(
        f"{preset} ({side} px) {_duration(seconds)}" for preset, (side, seconds) in CPU_NST_COST_S.items()
    )
    detail = (
        f"one photo takes about {costs} ({CPU_NST_MEASURED_ON}); the CycleGAN styles take seconds; "
        f"now: nst.preset = {settings.nst.preset}, nst.max_side = {settings.nst.max_side}"
    )
    suggestion = (
        'for a result in minutes set nst.preset = "fast" (and, on a busy machine, nst.cpu_threads to the '
        "cores nstd may use), or use the CycleGAN styles"
    )
    if settings.nst.preset == "best":  # three scales of 300 steps: the one that does not finish in time
        return warning(name, detail, suggestion)
    if settings.nst.preset == "balanced":
        return ok(name, f"{detail}; {suggestion}")
    return ok(name, detail)


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"


def format_cc_or(cc: gpu.CC | None, fallback: gpu.CC | None) -> str:
    chosen = cc or fallback
    return gpu.format_cc(chosen) if chosen else "unknown"


def check_torch(
    facts: gpu.TorchFacts, cc: gpu.CC | None, has_gpu: bool, configured_threads: int = 0
) -> Check:
    name = "PyTorch"
    if facts.version is None:
        return error(
            name,
            f"PyTorch is not importable: {facts.error}",
            "reinstall the environment: `scripts/bootstrap` (service: `sudo scripts/install-service`)",
        )
    if not has_gpu:
        build = "CPU build" if facts.cpu_build else f"CUDA {facts.cuda} build"
        count = configured_threads or facts.cpu_threads
        source = "nst.cpu_threads" if configured_threads else "torch's default; nst.cpu_threads sets it"
        threads = f"{count} thread{plural(count)} ({source})"
        return ok(name, f"torch {facts.version} ({build}); no GPU to use, running on the CPU with {threads}")
    cc_text = gpu.format_cc(cc) if cc else "unknown"
    if facts.cpu_build:
        fix = gpu.torch_install_hint(cc, facts.version) if cc else "install a CUDA build of PyTorch"
        return error(
            name,
            f"this PyTorch is a CPU build (torch {facts.version}): the GPU (compute capability {cc_text}) "
            "goes unused",
            fix,
        )
    if cc is not None:
        matching = gpu.matching_archs(facts.arch_list, cc)
        if facts.arch_list and not matching:
            shown = ", ".join(facts.arch_list)
            return error(
                name,
                f"torch {facts.version} (CUDA {facts.cuda}) has kernels for {shown}, none for this GPU "
                f"(compute capability {cc_text}, sm_{cc[0]}{cc[1]})",
                gpu.torch_install_hint(cc, facts.version),
            )
    if not facts.cuda_available:
        return error(
            name,
            f"torch {facts.version} (CUDA {facts.cuda}) cannot use the GPU: "
            "torch.cuda.is_available() is False",
            "the driver is probably too old for this CUDA: CUDA 12.x builds need driver 525 or newer, "
            "CUDA 13 builds 580 or newer; update the driver or pick an older build "
            f"({'NSTD_TORCH_BUILD=cu126 ' if cc and cc < gpu.MODERN_MIN_CC else ''}scripts/bootstrap)",
        )
    kernels = ", ".join(gpu.matching_archs(facts.arch_list, cc)) if cc else "?"
    return ok(
        name, f"torch {facts.version} (CUDA {facts.cuda}) runs on compute capability {cc_text} ({kernels})"
    )


def ort_fix(cc: gpu.CC | None) -> str:
    if cc is not None and cc < gpu.MODERN_MIN_CC:
        return (
            f"`pip install onnxruntime-gpu=={gpu.ORT_LAST_SM52}` in nstd's venv (it needs CUDA 12 and "
            "cuDNN 9, which PyTorch's cu126 build brings), or re-run "
            "`NSTD_TORCH_BUILD=cu126 scripts/bootstrap` "
            "(service: `sudo NSTD_TORCH_BUILD=cu126 scripts/install-service`)"
        )
    return "install an onnxruntime-gpu that matches your CUDA: 1.19-1.26 need CUDA 12, 1.27 and later CUDA 13"


def check_onnxruntime(facts: gpu.OrtFacts, cc: gpu.CC | None, has_gpu: bool) -> Check:
    name = "ONNX Runtime"
    if facts.version is None:
        return error(
            name,
            f"onnxruntime is not importable: {facts.error}",
            "reinstall the environment: `scripts/bootstrap` (service: `sudo scripts/install-service`)",
        )
    label = f"onnxruntime {facts.version}"
    if facts.error:
        return error(name, f"{label}: the probe session failed: {facts.error}", ort_fix(cc))
    if not has_gpu:
        return ok(name, f"{label}: CPU provider (no GPU)")
    if cc is not None and not gpu.ort_supports_cc(facts.version, cc):
        return error(
            name,
            f"{label} has no kernels for compute capability {gpu.format_cc(cc)}; "
            f"{gpu.ORT_LAST_SM52} is the last release for Maxwell (sm_52)"
            if cc < (6, 0)
            else f"{label} needs CUDA 13, which has no kernels below compute capability 7.5",
            ort_fix(cc),
        )
    if not facts.cuda_built:
        return error(
            name,
            f"{label} has no CUDA provider (the CPU-only onnxruntime package?)",
            "`pip uninstall onnxruntime` and install onnxruntime-gpu; " + ort_fix(cc),
        )
    if not facts.cuda_active:
        reason = f": {facts.load_error}" if facts.load_error else ""
        return error(
            name,
            f"{label}: the CUDA provider did not load{reason}; CycleGAN styles run on the CPU",
            f"{label} needs {gpu.ort_cuda_requirement(facts.version)} libraries; " + ort_fix(cc),
        )
    if facts.run_error:
        return error(
            name, f"{label}: the CUDA provider cannot run on this GPU: {facts.run_error}", ort_fix(cc)
        )
    return ok(name, f"{label}: CUDA provider active")


def check_vram(gpus: list[gpu.GpuInfo], settings: Settings | None) -> Check:
    card = gpus[0]
    free, total = card.memory_free_mib or 0, card.memory_total_mib or 0
    detail = f"{free} MiB free of {total} MiB on {card.name}"
    if free < LOW_VRAM_MIB:
        max_side = f" (now {settings.nst.max_side})" if settings else ""
        return warning(
            "free VRAM",
            detail,
            f"close games and other GPU programs, or lower nst.max_side{max_side} and cyclegan.max_side",
        )
    return ok("free VRAM", detail)


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
