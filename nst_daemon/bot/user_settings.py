"""Per-user preferences (table `user_settings`): the NST preset, colour preservation, the live preview."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from nst_daemon.bot.texts import PRESETS


@dataclass
class UserPrefs:
    preset: str
    preserve_colors: bool = False
    preview: bool = True  # a painted NST job's status shows the picture as it forms

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset, "preserve_colors": self.preserve_colors, "preview": self.preview}


def load_prefs(conn: sqlite3.Connection, user_id: int, default_preset: str) -> UserPrefs:
    row = conn.execute("select data from user_settings where user_id = ?", [user_id]).fetchone()
    data = json.loads(row[0]) if row and row[0] else {}
    preset = data.get("preset") if data.get("preset") in PRESETS else default_preset
    return UserPrefs(
        preset=preset,
        preserve_colors=bool(data.get("preserve_colors", False)),
        preview=bool(data.get("preview", True)),
    )


def save_prefs(conn: sqlite3.Connection, user_id: int, prefs: UserPrefs) -> None:
    with conn:
        conn.execute(
            "insert into user_settings (user_id, data, updated_at) values (?, ?, ?) "
            "on conflict(user_id) do update set data = excluded.data, updated_at = excluded.updated_at",
            [user_id, json.dumps(asdict(prefs)), time.time()],
        )
