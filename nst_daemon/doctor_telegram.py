"""`nstd doctor`'s Telegram rows: where the token comes from, whether Telegram accepts it (getMe), and who
may use the bot. doctor.py runs these."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path

from nst_daemon.config import ConfigError, Settings, mask_token
from nst_daemon.doctor_check import Check, error, ok, warning

log = logging.getLogger(__name__)

GET_ME_TIMEOUT_S = 10.0
BOTFATHER_FIX = (
    "get the current token from @BotFather (/mybots, choose the bot, API Token) and put it in {where}"
)


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
