"""`nstd users` (who may use the bot) and `nstd styles` (named styles): the administration groups of the CLI,
registered on the app by cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nst_daemon.cli_context import EngineChoice, console, err_console, settings
from nst_daemon.errors import NstdError

users_app = typer.Typer(help="Manage who may use the Telegram bot.", no_args_is_help=True)
styles_app = typer.Typer(
    help="Named styles: style images saved under a name, usable wherever a built-in style is.",
    no_args_is_help=True,
)


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
    ] = EngineChoice("adain"),
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
