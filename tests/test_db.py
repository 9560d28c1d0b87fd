"""SQLite state: migrations from an empty file, reopening, WAL, the users allowlist."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nst_daemon import db


def test_migrates_empty_file_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nstd.sqlite3"
    first = db.connect(path)
    assert db.schema_version(first) == db.SCHEMA_VERSION
    assert {"jobs", "fsm", "users", "user_settings"} <= set(first.table_names())
    db.add_user(first, 7)
    first.conn.close()

    again = db.connect(path)
    assert db.schema_version(again) == db.SCHEMA_VERSION
    assert [row["id"] for row in db.list_users(again)] == [7]


def test_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.sqlite3")
    assert db.journal_mode(conn) == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS


def test_existing_empty_sqlite_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    sqlite3.connect(path).close()
    assert db.schema_version(db.connect(path)) == db.SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(db.SchemaTooNew, match="upgrade nstd"):
        db.connect(path)


def test_users_round_trip_and_allowlist(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.sqlite3")
    assert db.add_user(conn, 5)
    assert not db.add_user(conn, 5)
    assert db.is_allowed(conn, 5, [])
    assert db.is_allowed(conn, 9, [9])
    assert not db.is_allowed(conn, 6, [9])
    assert db.remove_user(conn, 5)
    assert not db.remove_user(conn, 5)
    assert not db.is_allowed(conn, 5, [])
