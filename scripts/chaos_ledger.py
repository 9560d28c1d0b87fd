"""The chaos suite's books: what became of each photo, counted from what the fake Bot API received.

Nothing here reads the daemon's log or database: a photo counts as answered only if a message that the
fake server accepted (HTTP 200) answered it. Per photo the outcome is, in this order of preference:

- result: a sendPhoto/sendDocument that replies to the photo (`reply_parameters.message_id`);
- send_again: a message whose final text asks the user to send it again or try again later;
- refused: any other clear answer (busy, not an image, too big, ...);
- lost: none of these.

Results and failure replies quote the photo, so they are linked exactly. The status message ("got it,
preparing…") is not a reply today, so a refusal shown in it is linked to no photo: within one chat,
each such unlinked answer accounts for one photo that is otherwise unanswered. A status message whose last
text is a job state (queued, stylizing, done, failed, cancelled) is not an answer by itself: a job that
ends sends its own reply. One left in "got it"/"queued"/"stylizing" is counted as stuck.

Also here: the harness's own Telegram-like rate limiter (token buckets, per chat and global), used by
the rate-limited burst on top of whatever limits tests/fake_telegram.py enforces by default.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench_common import fmt as _fmt

RESULT_METHODS = ("sendPhoto", "sendDocument")
# Final texts that are job states, not answers (the job's own reply follows them).
JOB_STATE = re.compile(r"got it, preparing|queued, position|stylizing|: done in |: failed\.$|: cancelled\.$")
STUCK = re.compile(r"got it, preparing|queued, position|stylizing")
SEND_AGAIN = re.compile(r"\bagain\b|\btry\b.*\blater\b", re.IGNORECASE | re.DOTALL)


@dataclass
class Photo:
    """One photo a simulated user sent (the message as the fake server queued it)."""

    chat_id: int
    message_id: int
    update_id: int
    sent_at: float  # time.monotonic(), the clock the fake server stamps its calls with


@dataclass
class BotMessage:
    chat_id: int
    message_id: int
    text: str
    reply_to: int | None
    at: float


@dataclass
class Ledger:
    photos: int = 0
    results: int = 0  # photos that got at least one result
    result_messages: int = 0  # result messages received in all
    send_again: int = 0
    refused: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_in_window: int = 0  # explained by a kill right after a delivery (see count())
    stuck_status: int = 0
    lost_photos: list[tuple[int, int]] = field(default_factory=list)  # (chat, message id), for debugging
    outcomes: dict[tuple[int, int], str] = field(default_factory=dict)  # (chat, message id) -> outcome

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        del data["outcomes"]
        data["lost_photos"] = [list(item) for item in self.lost_photos[:20]]
        return data


def _reply_to(params: dict[str, Any]) -> int | None:
    """The message a bot call quotes: reply_parameters (a dict, or JSON already parsed) or the old field."""
    reply = params.get("reply_parameters")
    if isinstance(reply, dict) and str(reply.get("message_id", "")).isdigit():
        return int(reply["message_id"])
    legacy = params.get("reply_to_message_id")
    return int(legacy) if legacy is not None and str(legacy).isdigit() else None


def bot_messages(calls: Iterable[Any]) -> tuple[list[BotMessage], list[BotMessage]]:
    """(results, text messages with their final text after every accepted edit) from the call log."""
    results: list[BotMessage] = []
    texts: dict[tuple[int, int], BotMessage] = {}
    for call in calls:
        if not call.ok or call.chat_id is None:
            continue
        if call.method in RESULT_METHODS:
            results.append(
                BotMessage(call.chat_id, call.message_id or 0, "", _reply_to(call.params), call.at)
            )
        elif call.method == "sendMessage" and call.message_id is not None:
            texts[(call.chat_id, call.message_id)] = BotMessage(
                call.chat_id, call.message_id, call.text, _reply_to(call.params), call.at
            )
        elif call.method == "editMessageText" and call.message_id is not None:
            message = texts.get((call.chat_id, call.message_id))
            if message is not None:
                message.text = call.text
    return results, list(texts.values())


def answer_kind(text: str) -> str | None:
    """'send_again', 'refused', or None for a job-state text that answers nothing by itself."""
    if JOB_STATE.search(text):
        return None
    return "send_again" if SEND_AGAIN.search(text) else "refused"


def _in_window(first: float, later: float, kills: list[float], window_s: float) -> bool:
    """A second result is the delivery window's doing when a kill fell between the two sends, at most
    `window_s` after the first: the daemon died after Telegram's answer and before its commit."""
    return any(first <= kill <= first + window_s and kill <= later for kill in kills)


def count(
    photos: list[Photo], calls: Iterable[Any], kills: list[float] | None = None, window_s: float = 2.0
) -> Ledger:
    """The outcome of every photo from the fake server's call log; `kills` are SIGKILL times (monotonic)."""
    kills = sorted(kills or [])
    results, texts = bot_messages(calls)
    ledger = Ledger(photos=len(photos), result_messages=len(results))
    by_chat: dict[int, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_chat[photo.chat_id].append(photo)
    results_by_photo: dict[tuple[int, int], list[BotMessage]] = defaultdict(list)
    unlinked: dict[int, list[str]] = defaultdict(list)  # chat -> kinds of answers quoting no photo
    photo_keys = {(photo.chat_id, photo.message_id) for photo in photos}
    for result in results:
        key = (result.chat_id, result.reply_to or 0)
        if key in photo_keys:
            results_by_photo[key].append(result)
        else:
            unlinked[result.chat_id].append("result")
    answers: dict[tuple[int, int], str] = {}
    for message in texts:
        if STUCK.search(message.text):
            ledger.stuck_status += 1
        kind = answer_kind(message.text)
        if kind is None:
            continue
        key = (message.chat_id, message.reply_to or 0)
        if key in photo_keys:
            # A photo with several answers keeps the most useful: send_again over refused.
            if answers.get(key) != "send_again":
                answers[key] = kind
        else:
            unlinked[message.chat_id].append(kind)
    for chat_id, chat_photos in by_chat.items():
        pool = sorted(unlinked.get(chat_id, []), key=lambda kind: kind != "result")
        for photo in chat_photos:
            key = (photo.chat_id, photo.message_id)
            got = sorted(results_by_photo.get(key, []), key=lambda message: message.at)
            if got:
                ledger.results += 1
                ledger.outcomes[key] = "result"
                for earlier, later in itertools.pairwise(got):
                    ledger.duplicates += 1
                    if _in_window(earlier.at, later.at, kills, window_s):
                        ledger.duplicates_in_window += 1
                continue
            kind = answers.get(key) or (pool.pop(0) if pool else None)
            ledger.outcomes[key] = kind or "lost"
            if kind == "result":
                ledger.results += 1
            elif kind == "send_again":
                ledger.send_again += 1
            elif kind == "refused":
                ledger.refused += 1
            else:
                ledger.lost += 1
                ledger.lost_photos.append(key)
        # A result quoting no photo of this chat, left over once every photo is answered, is one too many.
        ledger.duplicates += sum(1 for kind in pool if kind == "result")
    return ledger


def unanswered(photos: list[Photo], calls: Iterable[Any]) -> int:
    """Photos without any answer yet (what the drain waits for)."""
    return count(photos, calls).lost


class TelegramLimits:
    """Telegram's flood limits as token buckets: per chat about one call a second (a short burst of
    `chat_burst` allowed), and `global_per_s` calls a second in all. `check` answers 0 (allowed, a token
    taken) or the whole seconds to wait, as a 429's retry_after says."""

    EXEMPT = frozenset({"getUpdates", "getFile", "getMe", "answerCallbackQuery", "setMyCommands"})

    def __init__(self, chat_per_s: float = 1.0, chat_burst: int = 3, global_per_s: float = 30.0) -> None:
        self.chat_per_s = chat_per_s
        self.chat_burst = chat_burst
        self.global_per_s = global_per_s
        self._chats: dict[int, list[float]] = {}  # chat -> [tokens, updated at]
        self._global: list[float] | None = None  # [tokens, updated at], full at the first call
        self._lock = threading.Lock()
        self.refused = 0

    @staticmethod
    def _refill(bucket: list[float], rate: float, capacity: float, now: float) -> None:
        bucket[0] = min(capacity, bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = max(bucket[1], now)

    def check(self, method: str, chat_id: int | None, now: float | None = None) -> int:
        if method in self.EXEMPT:
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._global is None:
                self._global = [self.global_per_s, now]
            self._refill(self._global, self.global_per_s, self.global_per_s, now)
            chat = None
            if chat_id is not None:
                chat = self._chats.setdefault(chat_id, [float(self.chat_burst), now])
                self._refill(chat, self.chat_per_s, self.chat_burst, now)
            waits = [(1 - self._global[0]) / self.global_per_s if self._global[0] < 1 else 0.0]
            if chat is not None and chat[0] < 1:
                waits.append((1 - chat[0]) / self.chat_per_s)
            wait = max(waits)
            if wait > 0:
                self.refused += 1
                return max(1, math.ceil(wait))
            self._global[0] -= 1
            if chat is not None:
                chat[0] -= 1
            return 0


# --- report -------------------------------------------------------------------------------------------------

COLUMNS = (
    ("sent", "photos"), ("results", "results"), ("send again", "send_again"), ("refused", "refused"),
    ("lost", "lost"), ("dup", "duplicates"), ("dup in window", "duplicates_in_window"),
    ("stuck status", "stuck_status"), ("peak daemon MB", "peak_daemon_rss_mb"),
    ("peak tree MB", "peak_tree_rss_mb"), ("alive", "alive"),
)  # fmt: skip


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chaos", title_justify="left")
    table.add_column("scenario", no_wrap=True)
    for title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for name, row in results.items():
        if "skipped" in row or "error" in row:
            table.add_row(name, *(["-"] * (len(COLUMNS) - 1)), row.get("skipped") or row.get("error"))
            continue
        table.add_row(name, *(("yes" if row[key] else "NO") if key == "alive" else _fmt(row[key]) for
                              _, key in COLUMNS))  # fmt: skip
    Console(width=max(150, Console().width)).print(table)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The same table as markdown, for docs/reliability.md."""
    lines = [
        "| scenario | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "| --- |" + " --- |" * len(COLUMNS),
    ]
    for name, row in results.items():
        if "skipped" in row or "error" in row:
            lines.append(f"| {name} | {row.get('skipped') or row.get('error')} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = [
            ("yes" if row[key] else "**no**") if key == "alive" else _fmt(row[key]) for _, key in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
