"""First start of `nstd run`: download the missing models, then say in plain words what is ready.

The download runs `nstd models pull` (catalog.pull: resumable, verified, with progress) as a child
process rather than in a thread: a stop request ends it by its pid at once, its progress goes straight to
the terminal, and the daemon's loop keeps answering systemd meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from rich.filesize import decimal

import nst_daemon
from nst_daemon.catalog import CatalogEntry, get_catalog, installed_status
from nst_daemon.config import Settings
from nst_daemon.errors import NstdError
from nst_daemon.sdnotify import Notifier

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
# The pull child imports this very package, wherever the daemon was started from.
PACKAGE_ROOT = str(Path(nst_daemon.__file__).resolve().parent.parent)
EXTEND_EVERY_S = 20.0  # under systemd, the start timeout is pushed out while the download runs


def gpu_present() -> bool:
    """Whether nvidia-smi reports an NVIDIA GPU; cheap (no torch import), False when the probe fails."""
    from nst_daemon import gpu

    try:
        return bool(gpu.query_gpus(timeout=10))
    except Exception:
        return False


# Kinds that take seconds per photo on a CPU, so "auto" pulls them on any machine.
FAST_ON_A_CPU = ("cyclegan", "adain_vgg", "adain_decoder")


def wanted_models(settings: Settings, has_gpu: bool | None = None) -> list[CatalogEntry]:
    """The catalog models `models.pull_on_start` asks for, smallest first (the first style is ready soonest).

    "auto" is every CycleGAN style and the two AdaIN models (94 MB: any picture as a style, in seconds),
    and VGG19 only with an NVIDIA GPU: on a CPU multi-style NST costs minutes per photo and VGG19 is
    575 MB, more than the others together, which run in seconds.
    """
    choice = settings.models.pull_on_start
    if choice == "none":
        return []
    entries = list(get_catalog(settings).values())
    if choice == "styles":
        entries = [entry for entry in entries if entry.kind == "cyclegan"]
    elif choice == "auto" and not (gpu_present() if has_gpu is None else has_gpu):
        entries = [entry for entry in entries if entry.kind in FAST_ON_A_CPU]
    return sorted(entries, key=lambda entry: entry.size)


def missing_models(settings: Settings, has_gpu: bool | None = None) -> list[CatalogEntry]:
    installed = {status.name for status in installed_status(settings) if status.installed}
    return [entry for entry in wanted_models(settings, has_gpu) if entry.name not in installed]


def offline_help(entries: list[CatalogEntry]) -> str:
    """One line: the three ways to install `entries` without their upstream servers."""
    files = ", ".join(entry.file for entry in entries)
    first = entries[0]
    return (
        f"to install them offline: serve {files} from one URL and run `scripts/run --mirror URL` "
        f"(or `nstd models pull --mirror URL`), or fetch each file elsewhere (the URLs are in the "
        f"model catalog, models/catalog.toml) and run `nstd models import NAME FILE` on this machine, "
        f"e.g. `nstd models import {first.name} {first.file}`"
    )


def _pull_command(settings: Settings, names: list[str]) -> list[str]:
    config = ["--config", str(settings.source.resolve())] if settings.source else []
    return [sys.executable, "-m", "nst_daemon", *config, "models", "pull", *names]


async def pull_missing(settings: Settings, stop: asyncio.Event, notifier: Notifier | None = None) -> bool:
    """Download the models `models.pull_on_start` wants and lacks; False when stopped meanwhile.

    A failed download is logged with the offline alternatives and the daemon carries on with what it has.
    """
    try:
        missing = await asyncio.to_thread(missing_models, settings)
    except NstdError as exc:
        log.warning("cannot check the models to download: %s", exc.message)
        return True
    if not missing:
        return True
    total = sum(entry.size for entry in missing)
    log.info(
        "first start: downloading %d model(s), about %s: %s (models.pull_on_start = %r; "
        '"none" or `scripts/run --no-pull` skips this)',
        len(missing),
        decimal(total),
        ", ".join(entry.name for entry in missing),
        settings.models.pull_on_start,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
    }
    process = await asyncio.create_subprocess_exec(
        *_pull_command(settings, [e.name for e in missing]), env=env
    )
    finished = asyncio.ensure_future(process.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not finished.done():
            if notifier is not None and notifier.enabled:
                notifier.notify(
                    f"EXTEND_TIMEOUT_USEC={int(EXTEND_EVERY_S * 3 * 1e6)}\nSTATUS=downloading models"
                )
            await asyncio.wait(
                {finished, stopping}, timeout=EXTEND_EVERY_S, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping.done() and not finished.done():
                log.info("stopping: ending the model download (pid %d)", process.pid)
                process.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(finished), STOP_TIMEOUT_S)
                except TimeoutError:
                    process.kill()
                    await finished
    finally:
        stopping.cancel()
    if stop.is_set():  # also Ctrl-C in a terminal, which reaches the download's process group first
        log.info("stopped during the model download; it resumes where it stopped at the next start")
        return False
    if process.returncode != 0:
        statuses = await asyncio.to_thread(installed_status, settings)
        installed = {status.name for status in statuses if status.installed}
        still = [entry for entry in missing if entry.name not in installed]
        if still:
            log.warning(
                "could not download %s (the error is above); %s",
                ", ".join(e.name for e in still),
                offline_help(still),
            )
    return True


def _shown(path: Path) -> str:
    """A folder as the user types it: relative to the working directory when inside it."""
    try:
        return f"{path.resolve().relative_to(Path.cwd().resolve())}/"
    except ValueError:
        return f"{path}/"


def ready_lines(settings: Settings) -> list[str]:
    """The last start-up lines: where to drop a photo, which styles are ready, what is missing."""
    try:
        statuses = installed_status(settings)
    except NstdError as exc:
        return [f"cannot read the model catalog: {exc.message}"]
    styles = [status.style for status in statuses if status.kind == "cyclegan" and status.installed]
    nst_ready = any(status.kind == "vgg19" and status.installed for status in statuses)
    instant_ready = {"adain_vgg", "adain_decoder"} <= {status.kind for status in statuses if status.installed}
    if not styles and not nst_ready and not instant_ready:
        return ["no style is ready yet: run `nstd models pull` (offline: `nstd models import`), then restart"]
    lines = []
    inbox, outbox = settings.watch.dir / "inbox", settings.watch.dir / "outbox"
    if not settings.watch.enabled:
        lines.append("the watched folder is off: set watch.enabled = true to drop photos into a folder")
    elif styles:
        others = f" (or {', '.join(styles[1:])})" if len(styles) > 1 else ""
        lines.append(
            f"ready: drop a photo into {_shown(inbox / styles[0])}{others}; "
            f"the result appears in {_shown(outbox / styles[0])}"
        )
    if instant_ready:
        where = f", then drop photos into {_shown(inbox)}NAME/" if settings.watch.enabled else ""
        lines.append(f"any picture as a style in seconds: `nstd styles add NAME picture.jpg`{where}")
    if nst_ready and settings.watch.enabled:
        lines.append(
            f"multi-style NST: put style images into {_shown(settings.watch.dir / 'styles')} "
            f"and drop a photo into {_shown(inbox / 'nst')}"
        )
    elif not nst_ready:
        lines.append(
            "multi-style NST needs vgg19: `nstd models pull vgg19` "
            "(575 MB; on a CPU each photo takes minutes, see `nstd doctor`)"
        )
    return lines
