"""Per-user preferences (table `user_settings`): the NST preset, colour preservation, the live preview, the
engine for one's own style images (Instant AdaIN or Painted NST) and the style strength."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from nst_daemon.bot.texts import PRESETS

ENGINES = ("adain", "nst")  # Instant, Painted
STRENGTHS = (0.25, 0.5, 0.75, 1.0)  # the /settings buttons; any value in [0, 1] is kept


@dataclass
class UserPrefs:
    preset: str
    preserve_colors: bool = False
    preview: bool = True  # a painted NST job's status shows the picture as it forms
    engine: str = ""  # for one's own style images: adain | nst; "": the machine's default (stylize.py)
    strength: float = 1.0  # every engine's blend with the photo: 0 keeps the photo, 1 the full style

    def params(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "preserve_colors": self.preserve_colors,
            "preview": self.preview,
            "strength": self.strength,
        }


def load_prefs(conn: sqlite3.Connection, user_id: int, default_preset: str) -> UserPrefs:
    row = conn.execute("select data from user_settings where user_id = ?", [user_id]).fetchone()
    data = json.loads(row[0]) if row and row[0] else {}
    preset = data.get("preset") if data.get("preset") in PRESETS else default_preset
    return UserPrefs(
        preset=preset,
        preserve_colors=bool(data.get("preserve_colors", False)),
        preview=bool(data.get("preview", True)),
        engine=data.get("engine") if data.get("engine") in ENGINES else "",
        strength=_strength(data.get("strength")),
    )


def _strength(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return 1.0


def save_prefs(conn: sqlite3.Connection, user_id: int, prefs: UserPrefs) -> None:
    with conn:
        conn.execute(
            "insert into user_settings (user_id, data, updated_at) values (?, ?, ?) "
            "on conflict(user_id) do update set data = excluded.data, updated_at = excluded.updated_at",
            [user_id, json.dumps(asdict(prefs)), time.time()],
        )
