"""The `nstd` command line: parse, load settings, call one function. No logic lives here."""

from __future__ import annotations

import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from nst_daemon import __version__

# The invocation's state, settings() and the consoles are cli_context's, shared with cli_admin's groups.
from nst_daemon.cli_context import EngineChoice, console, err_console, settings, state
from nst_daemon.errors import NstdError
from nst_daemon.logs import setup_logging

app = typer.Typer(
    help="nstd: a self-hosted neural style transfer daemon (Telegram bot, watched folder, command line).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(help="Download, import, list and verify model weights.", no_args_is_help=True)
jobs_app = typer.Typer(help="List jobs, show one, export its result.")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
# `nstd users` and `nstd styles`: cli_admin.py.
from nst_daemon.cli_admin import styles_app, users_app  # noqa: E402

app.add_typer(users_app, name="users")
app.add_typer(styles_app, name="styles")


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class PresetChoice(StrEnum):
    fast = "fast"
    balanced = "balanced"
    best = "best"


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _version(value: bool) -> None:
    if value:
        console.print(f"nstd {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $NSTD_CONFIG, ./config.toml, ...).",
            dir_okay=False,
            metavar="PATH",
        ),
    ] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help="Log level (default: daemon.log_level).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", metavar="")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit.", metavar=""
        ),
    ] = False,
) -> None:
    state.config_path = config
    state.debug = debug
    setup_logging((log_level.value if log_level else None) or ("debug" if debug else "info"))
    state.log_level_explicit = bool(log_level or debug)  # type: ignore[attr-defined]


@app.command()
def run() -> None:
    """Run the daemon: Telegram bot, watched folder, job worker."""
    from nst_daemon import daemon

    raise typer.Exit(daemon.run(settings()))


@models_app.command("list")
def models_list() -> None:
    """Show every catalog model, whether it is installed and verified."""
    from nst_daemon import catalog

    catalog.print_list(settings(), console)


@models_app.command("verify")
def models_verify() -> None:
    """Re-hash and re-validate every installed model."""
    from nst_daemon import catalog

    raise typer.Exit(catalog.verify_all(settings(), console))


@models_app.command("pull")
def models_pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Catalog names (default: all).", metavar="[NAME]...")
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(help="Base URL serving the same file names.", metavar="URL")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download again even if installed.", metavar="")
    ] = False,
) -> None:
    """Download, verify, convert and install models."""
    from nst_daemon import catalog

    raise typer.Exit(catalog.pull(settings(), names or [], mirror=mirror, force=force, console=console))


@models_app.command("import")
def models_import(
    name: Annotated[str, typer.Argument(help="Catalog name, e.g. vgg19 or style_monet.")],
    file: Annotated[Path, typer.Argument(help="A checkpoint file you already have.", dir_okay=False)],
) -> None:
    """Validate, convert and install a checkpoint from a local file (for offline machines)."""
    from nst_daemon import catalog

    catalog.import_file(settings(), name, file, console=console)


@app.command()
def stylize(
    input: Annotated[Path, typer.Argument(help="Content image.", dir_okay=False)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the result: a .jpg or .png file, or a folder (PHOTO.STYLE.jpg in it).",
            metavar="PATH",
        ),
    ],
    style: Annotated[
        str | None,
        typer.Option(
            help="A pretrained style (monet, cezanne, ukiyoe, vangogh, summer2winter, winter2summer) or a "
            "named style (nstd styles list).",
            metavar="STYLE",
        ),
    ] = None,
    style_image: Annotated[
        list[Path] | None,
        typer.Option("--style-image", help="Style image (repeatable): several are blended.", metavar="PATH"),
    ] = None,
    style_weight: Annotated[
        list[float] | None,
        typer.Option(
            "--style-weight",
            help="Weight of each --style-image, in order (repeatable; default equal; normalised).",
            metavar="W",
        ),
    ] = None,
    engine: Annotated[
        EngineChoice | None,
        typer.Option(
            help="For --style-image: adain (instant) or nst (slower, finer). Default: the one installed, "
            "else adain without a GPU."
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(help="AdaIN: how strongly to apply the style, 0 to 1 (default 1).", metavar="F"),
    ] = None,
    preset: Annotated[PresetChoice | None, typer.Option(help="NST quality preset.")] = None,
    max_side: Annotated[
        int | None, typer.Option(help="Longest side of the result in pixels.", min=16, metavar="N")
    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(help="Where to run.")] = None,
    preserve_colors: Annotated[
        bool, typer.Option("--preserve-colors", help="NST, AdaIN: keep the content's colours.", metavar="")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the output file if it exists.", metavar="")
    ] = False,
) -> None:
    """Stylize one image with a pretrained style or with style images (instant AdaIN or multi-style NST)."""
    from nst_daemon import stylize as stylize_command

    stylize_command.run(
        settings(),
        input,
        output,
        style=style,
        style_images=style_image or [],
        preset=preset.value if preset else None,
        max_side=max_side,
        device=device.value if device else None,
        preserve_colors=preserve_colors,
        console=console,
        force=force,
        progress_console=err_console,
        engine=engine.value if engine else None,
        strength=strength,
        style_weights=style_weight or None,
    )


@app.command()
def doctor() -> None:
    """Check the installation: config, token, GPU and drivers, models, folders."""
    from nst_daemon import doctor as doctor_command

    raise typer.Exit(doctor_command.run(state.config_path, console))


@jobs_app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many of the newest jobs to show.", min=1)] = 50,
) -> None:
    """List recent jobs; `show ID` for one job, `export ID -o FILE` for its result."""
    if ctx.invoked_subcommand is not None:
        return
    from nst_daemon import views
    from nst_daemon.jobs import JobStore

    views.print_jobs(JobStore.open(settings().db_path), console, limit=limit)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id (see `nstd jobs`).", metavar="ID")],
) -> None:
    """Show one job: its details, its input and result keys in the object store, where the result went."""
    from nst_daemon import job_results

    job_results.show(settings(), job_id, console)


@jobs_app.command("export")
def jobs_export(
    job_id: Annotated[int, typer.Argument(help="The job's id (see `nstd jobs`).", metavar="ID")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="A .jpg or .png file, or a folder (job-ID.jpg in it).", metavar="PATH"
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace the output file if it exists.", metavar="")
    ] = False,
) -> None:
    """Write a job's result from the object store to a file."""
    from nst_daemon import job_results

    job_results.export(settings(), job_id, output, force=force, console=console)


def main() -> None:
    """Console-script entry point: user errors are one line on stderr, tracebacks only with --debug."""
    try:
        app(standalone_mode=True)
    except NstdError as exc:
        if state.debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless asked for more
        if state.debug:
            traceback.print_exc()
        else:
            err_console.print(
                f"[bold red]error:[/] {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(1)
