"""SQLite state: one WAL-mode database with versioned forward migrations (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from nst_daemon.fsutil import ensure_dir

BUSY_TIMEOUT_MS = 10_000


def _v1_initial(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {
            "id": int,
            "source": str,  # telegram | folder | cli
            "owner": str,  # user id, chat id or file path
            "engine": str,  # nst | cyclegan
            "styles": str,  # JSON list of style names (cyclegan) or style image keys (nst)
            "params": str,  # JSON object
            "state": str,  # queued | running | done | failed | cancelled
            "progress": float,
            "attempts": int,
            "error": str,
            "input_keys": str,  # JSON list of store keys
            "output_key": str,
            "delivery": str,  # pending | delivered | failed
            "delivery_attempts": int,
            "reply": str,  # JSON: where the source wants the result (chat id, message ids, paths)
            "created_at": float,
            "started_at": float,
            "finished_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"source", "owner", "engine", "state", "created_at"},
        defaults={"progress": 0.0, "attempts": 0, "delivery": "pending", "delivery_attempts": 0},
    )
    db["jobs"].create_index(["state", "id"])
    db["jobs"].create_index(["owner", "state"])
    db["fsm"].create({"key": str, "state": str, "data": str, "updated_at": float}, pk="key")
    db["users"].create({"id": int, "added_at": float, "note": str}, pk="id")
    db["user_settings"].create({"user_id": int, "data": str, "updated_at": float}, pk="user_id")


def _v2_telegram_updates(db: sqlite_utils.Database) -> None:
    # Durable intake (nst_daemon/bot/intake.py): each Telegram update from an allowed user, stored before
    # Telegram is told it arrived, until its handling finished. `status` maps an image's intake key to the
    # "got it" message sent for it, so a replay after a crash edits that message instead of leaving it;
    # `fsm` lets a replay start from the conversation as the first handling found it.
    db["telegram_updates"].create(
        {
            "update_id": int,
            "user_id": int,
            "payload": str,  # the update as Telegram sent it (JSON)
            "state": str,  # pending | done
            "attempts": int,  # handlings started; a replay past the limit is given up with a reply
            "status": str,  # JSON {intake key: status message id}
            "fsm": str,  # JSON {state, data}: the conversation as it was before the update's handling
            "outcome": str,
            "received_at": float,
            "finished_at": float,
        },
        pk="update_id",
        not_null={"payload", "state", "received_at"},
        defaults={"state": "pending", "attempts": 0, "status": "{}"},
    )
    db["telegram_updates"].create_index(["state", "update_id"])


def _v3_named_styles(db: sqlite_utils.Database) -> None:
    # Named styles (nst_daemon/named_styles.py): the record; the images live in the object store.
    db["styles"].create(
        {
            "name": str,  # normalised (style_names.normalize_style); never a built-in or reserved name
            "engine": str,  # adain | nst
            "strength": float,  # AdaIN's alpha; NULL: 1 (adain) or none (nst)
            "weights": str,  # JSON list, one per image; NULL: equal
            "image_keys": str,  # JSON list of object store keys, styles/<name>/<version>/<n>.<ext>
            "updated_at": float,
        },
        pk="name",
        not_null={"engine", "image_keys", "updated_at"},
    )


def _v4_style_owners(db: sqlite_utils.Database) -> None:
    # A bot user's own, private named styles: owner "" is everyone's (the CLI's), else a Telegram user id.
    # Two users may each have a style of the same name, so the key becomes (owner, name).
    db["styles"].add_column("owner", str, not_null_default="")
    db["styles"].transform(pk=("owner", "name"))


# Append only: each function moves the schema from version N to N + 1.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_initial,
    _v2_telegram_updates,
    _v3_named_styles,
    _v4_style_owners,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    pass


def connect(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the state database and bring its schema up to date."""
    ensure_dir(path.parent, "the state directory (paths.state_dir)")
    db = sqlite_utils.Database(open_connection(path))
    db.enable_wal()
    migrate(db)
    return db


def open_connection(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """A connection with nstd's pragmas. `autocommit` leaves transactions to explicit BEGIN/COMMIT."""
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        check_same_thread=False,
        **({"isolation_level": None} if autocommit else {}),
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def file_of(conn: sqlite3.Connection) -> Path:
    """The file behind an open connection (a second connection to it needs the path)."""
    for _, name, filename in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and filename:
            return Path(filename)
    raise ValueError("the database has no file (in-memory databases cannot be shared between connections)")


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database) -> int:
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the state database is at schema version {current}, newer than this nstd ({SCHEMA_VERSION}); "
            "upgrade nstd"
        )
    for version in range(current, SCHEMA_VERSION):
        with db.conn:
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
    return schema_version(db)


def journal_mode(db: sqlite_utils.Database) -> str:
    return db.execute("PRAGMA journal_mode").fetchone()[0]


# --- users (the allowlist kept on top of telegram.allowed_users) ---


def add_user(db: sqlite_utils.Database, user_id: int, note: str = "") -> bool:
    """Add a user; False when already present."""
    if db["users"].count_where("id = ?", [user_id]):
        return False
    db["users"].insert({"id": user_id, "added_at": time.time(), "note": note})
    return True


def remove_user(db: sqlite_utils.Database, user_id: int) -> bool:
    """Remove a user; False when not present."""
    if not db["users"].count_where("id = ?", [user_id]):
        return False
    db["users"].delete(user_id)
    return True


def list_users(db: sqlite_utils.Database) -> list[dict]:
    return list(db["users"].rows_where(order_by="id"))


def is_allowed(db: sqlite_utils.Database, user_id: int, configured: list[int]) -> bool:
    return user_id in configured or bool(db["users"].count_where("id = ?", [user_id]))
