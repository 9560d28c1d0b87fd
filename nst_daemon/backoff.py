"""The one backoff policy: how long to wait before trying a failed call again.

Every retry in nstd asks a `Backoff` (a result's redelivery, the worker's wait for disk space, the bot's
getUpdates and API calls, a model download). Each place keeps its own schedule and its own budget of
tries, because those are what its tests and users see; the rule for turning failures into a wait lives
here once. A schedule is a list of waits used in order, the last one repeating; `exponential` writes the
doubling kind out as such a list.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, repeat


@dataclass(frozen=True)
class Backoff:
    delays: tuple[float, ...]
    # The most of a server's Retry-After that is honoured (a longer ask is cut to this); 0: not honoured.
    max_retry_after: float = 0.0

    def __post_init__(self) -> None:
        if not self.delays or min(self.delays) < 0:
            raise ValueError(f"a backoff needs at least one wait, none negative: {self.delays}")

    @classmethod
    def exponential(cls, first: float, cap: float, max_retry_after: float = 0.0) -> Backoff:
        """first, 2 x first, 4 x first, ... up to `cap`, then `cap` for good."""
        delays = [first]
        while delays[-1] * 2 < cap:
            delays.append(delays[-1] * 2)
        return cls((*delays, cap), max_retry_after)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after `failures` failures in a row (1 for the first): a server's Retry-After, where
        honoured, makes it longer, never shorter."""
        wait = self.delays[min(max(failures, 1), len(self.delays)) - 1]
        if retry_after is not None and self.max_retry_after > 0:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    def waits(self) -> Iterator[float]:
        """The waits in order, the last one repeating without end."""
        return chain(self.delays, repeat(self.delays[-1]))


# For a wait on something outside nstd that comes back by itself (disk space, Telegram reachable): quick
# at first, then twice a minute for as long as it takes.
PATIENT = Backoff((1.0, 2.0, 5.0, 10.0, 30.0))
