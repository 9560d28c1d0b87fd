"""Per-user limit on job submissions: a sliding one-minute window, kept in memory.

In memory on purpose: a restart forgets the window, which at worst lets a user submit one extra
minute's worth; the queue's own per-user and total limits still hold.
"""

from __future__ import annotations

import time
from collections import deque


class RateLimiter:
    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._hits: dict[int, deque[float]] = {}

    def check(self, user_id: int, now: float | None = None) -> float:
        """Record one submission; 0 when allowed, else the seconds to wait until one is."""
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(user_id, deque())
        while hits and now - hits[0] >= self.window_s:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return max(0.1, self.window_s - (now - hits[0]))
        hits.append(now)
        return 0.0
