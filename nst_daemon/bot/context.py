"""The services handlers need, injected by aiogram as the `services` argument."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from nst_daemon import named_styles
from nst_daemon.bot.ratelimit import RateLimiter
from nst_daemon.bot.starter import JobStarter
from nst_daemon.bot.status_messages import JobProgress, StatusEditor
from nst_daemon.bot.storage import SQLiteStorage
from nst_daemon.bot.user_settings import UserPrefs, load_prefs, save_prefs
from nst_daemon.config import Settings
from nst_daemon.jobs import JobQueue
from nst_daemon.named_styles import NamedStyle


@dataclass
class Services:
    settings: Settings
    db: sqlite_utils.Database
    queue: JobQueue
    storage: SQLiteStorage
    limiter: RateLimiter
    editor: StatusEditor
    progress: JobProgress
    starter: JobStarter

    async def prefs(self, user_id: int) -> UserPrefs:
        return await self.storage.call(load_prefs, user_id, self.settings.nst.preset)

    async def save_prefs(self, user_id: int, prefs: UserPrefs) -> None:
        await self.storage.call(save_prefs, user_id, prefs)

    def style_engine(self, prefs: UserPrefs) -> str:
        """The engine for a user's own style images: their choice, else what `nstd stylize` picks here."""
        from nst_daemon.stylize import default_engine

        return prefs.engine or default_engine(self.settings, None)

    def named_style(self, text: str, user_id: int) -> NamedStyle | None:
        """The named style a user means by `text`: everyone's, else their own."""
        return named_styles.lookup(self.db, text, str(user_id))

    def named_styles(self, user_id: int) -> list[NamedStyle]:
        return named_styles.usable_by(self.db, str(user_id))
