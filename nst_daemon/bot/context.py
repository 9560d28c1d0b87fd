"""The services handlers need, injected by aiogram as the `services` argument."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from nst_daemon.bot.ratelimit import RateLimiter
from nst_daemon.bot.starter import JobStarter
from nst_daemon.bot.status_messages import JobProgress, StatusEditor
from nst_daemon.bot.storage import SQLiteStorage
from nst_daemon.bot.user_settings import UserPrefs, load_prefs, save_prefs
from nst_daemon.config import Settings
from nst_daemon.jobs import JobQueue


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
