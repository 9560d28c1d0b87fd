"""The `nstd` command line: parse, load settings, call one function. No logic lives here."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from nst_daemon import __version__
from nst_daemon.config import ConfigError, Settings, load_settings
from nst_daemon.errors import NstdError
from nst_daemon.logs import redactor, setup_logging
from nst_daemon.terminal import make_console

console = make_console()
err_console = make_console(stderr=True)

app = typer.Typer(
    help="nstd: a self-hosted neural style transfer daemon (Telegram bot, watched folder, command line).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(help="Download, import, list and verify model weights.", no_args_is_help=True)
users_app = typer.Typer(help="Manage who may use the Telegram bot.", no_args_is_help=True)
jobs_app = typer.Typer(help="List jobs, show one, export its result.")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
styles_app = typer.Typer(
    help="Named styles: style images saved under a name, usable wherever a built-in style is.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
app.add_typer(styles_app, name="styles")


class _State:
    config_path: Path | None = None
    debug: bool = False
    settings: Settings | None = None


state = _State()


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class PresetChoice(StrEnum):
    fast = "fast"
    balanced = "balanced"
    best = "best"


class EngineChoice(StrEnum):
    adain = "adain"
    nst = "nst"


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


def settings() -> Settings:
    """Settings, loaded once per invocation on first use so that --help never needs a config."""
    if state.settings is None:
        state.settings = load_settings(state.config_path)
        if not getattr(state, "log_level_explicit", False):
            logging.getLogger().setLevel(state.settings.daemon.log_level.upper())
        with contextlib.suppress(ConfigError):  # reported by the command that needs the token
            redactor.add(state.settings.telegram_token())
    return state.settings


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


@users_app.command("list")
def users_list() -> None:
    """Show allowed users: from the config file and added with `nstd users add`."""
    from nst_daemon import db, views

    current = settings()
    views.print_users(db.connect(current.db_path), current.telegram.allowed_users, console)


@users_app.command("add")
def users_add(
    # Telegram user ids are positive; negative ids are groups and channels, which the bot does not serve.
    user_id: Annotated[int, typer.Argument(help="Numeric Telegram user id.", min=1)],
) -> None:
    """Allow a Telegram user id."""
    from nst_daemon import db

    added = db.add_user(db.connect(settings().db_path), user_id)
    console.print(f"user {user_id} {'added' if added else 'was already allowed'}")


@users_app.command("remove")
def users_remove(user_id: Annotated[int, typer.Argument(help="Numeric Telegram user id.")]) -> None:
    """Remove a Telegram user id added with `nstd users add`."""
    from nst_daemon import db

    current = settings()
    if not db.remove_user(db.connect(current.db_path), user_id):
        hint = (
            " (it is listed in telegram.allowed_users; edit the config)"
            if (user_id in current.telegram.allowed_users)
            else ""
        )
        raise NstdError(f"user {user_id} is not in the database allowlist{hint}")
    console.print(f"user {user_id} removed")


@styles_app.command("list")
def styles_list() -> None:
    """Show the named styles (and name the built-in ones)."""
    from nst_daemon import db, named_styles

    current = settings()
    styles = named_styles.list_styles(db.connect(current.db_path)) if current.db_path.exists() else []
    named_styles.print_list(styles, console)


@styles_app.command("add")
def styles_add(
    name: Annotated[str, typer.Argument(help="The style's name (letters and digits).")],
    images: Annotated[list[Path], typer.Argument(help="Style images (several are blended).", dir_okay=False)],
    engine: Annotated[
        EngineChoice, typer.Option(help="adain (instant) or nst (slower, finer).")
    ] = EngineChoice.adain,
    strength: Annotated[
        float | None,
        typer.Option(help="AdaIN: how strongly to apply the style, 0 to 1 (default 1).", metavar="F"),
    ] = None,
    style_weight: Annotated[
        list[float] | None,
        typer.Option(
            "--style-weight", help="Weight of each image, in order (repeatable; default equal).", metavar="W"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a named style of the same name.", metavar="")
    ] = False,
) -> None:
    """Save style images as a named style; creates the watched folder's inbox/NAME/."""
    from nst_daemon import db, named_styles
    from nst_daemon.store import open_store
    from nst_daemon.watch import create_style_folders

    current = settings()
    style = named_styles.add(
        current,
        db.connect(current.db_path),
        open_store(current),
        name,
        images,
        engine=engine.value,
        strength=strength,
        weights=style_weight or None,
        force=force,
    )
    where = f"use `nstd stylize --style {style.name}`"
    if current.watch.enabled:  # a disabled folder gets its inbox/NAME/ when the daemon creates the rest
        try:
            where += f" or drop photos in {create_style_folders(current, style.name)}"
        except NstdError as exc:  # the style is saved all the same; the daemon retries at its start
            err_console.print(f"note: {exc.message}", highlight=False, soft_wrap=True)
    console.print(
        f"style {style.name} saved: {len(style.image_keys)} image(s), {style.engine}; {where}",
        highlight=False,
        soft_wrap=True,
    )


@styles_app.command("remove")
def styles_remove(name: Annotated[str, typer.Argument(help="The named style to remove.")]) -> None:
    """Remove a named style and its stored images (the inbox folder and its files stay)."""
    from nst_daemon import db, named_styles
    from nst_daemon.store import open_store

    current = settings()
    style = named_styles.remove(current, db.connect(current.db_path), open_store(current), name)
    console.print(f"style {style.name} removed", highlight=False)


@styles_app.command("sheet")
def styles_sheet(
    photo: Annotated[Path, typer.Argument(help="The photo to show in every style.", dir_okay=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The sheet to write (.jpg or .png).")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output file.", metavar="")
    ] = False,
) -> None:
    """One picture of PHOTO in every available style (built-in and named), each tile labelled."""
    from nst_daemon.style_sheet import make_sheet_file

    make_sheet_file(settings(), photo, output, force=force, console=console)


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
