"""One status message per job, edited in place as the job moves: queued, stylizing N%, done.

Telegram allows few edits per message, so edits are throttled per message: at most one every
`interval_s`; newer text replaces older pending text, and the latest is flushed when the window opens.
The first edit waits `first_edit_after_s` after the message is first updated: a job that starts at once
goes from "got it" to "queued" to "stylizing" within milliseconds, and a quick one is done before the
second is up, so the waiting folds those into one edit instead of racing the result to the same chat.
A final text is never dropped or overtaken by a late progress update. With the Bot API limiter
(api_limits.py), an edit also waits until its chat has a free slot that no result needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import InlineKeyboardMarkup

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.api_limits import ApiLimiter
from nst_daemon.jobs import FINAL_STATES, Job, JobQueue

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 3.0
FIRST_EDIT_AFTER_S = 1.0
PROGRESS_STEP_PERCENT = 5
MIN_PROGRESS_FOR_ETA = 0.05
MIN_ELAPSED_FOR_ETA_S = 3.0


def job_label(job: Job) -> str:
    if job.engine == "cyclegan":
        return texts.style_name(job.styles[0]) if job.styles else "Style"
    count = max(1, len(job.input_keys) - 1)
    return f"{texts.NST_NAME} ({count} style image{texts.plural(count)})"


def job_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return job.finished_at - job.started_at


def device_text(job: Job) -> str:
    """'CUDAExecutionProvider' -> 'cuda'; engines report devices in their own words."""
    device = str(job.params.get("device") or "?")
    return (
        device.removesuffix("ExecutionProvider").lower() if device.endswith("ExecutionProvider") else device
    )


def time_left(job: Job, now: float | None = None) -> str:
    """The estimated time left of a running job, from its progress and elapsed time ('' until there is
    enough of both to say: the first steps of an NST include loading the model)."""
    if job.started_at is None or not MIN_PROGRESS_FOR_ETA <= job.progress < 1.0:
        return ""
    elapsed = (time.time() if now is None else now) - job.started_at
    if elapsed < MIN_ELAPSED_FOR_ETA_S:
        return ""
    left = elapsed * (1.0 - job.progress) / job.progress
    if left < 60:
        return f"{max(5, round(left / 5) * 5)} s"
    return f"{round(left / 60)} min"


def progress_step(job: Job) -> int:
    """The progress as shown in steps: a running job's message is edited when its step changes, so a
    long job gets a bounded number of edits, not one every few seconds."""
    return int(job.progress * 100) // PROGRESS_STEP_PERCENT


def status_text(job: Job, position: tuple[int, int] | None) -> str:
    label = job_label(job)
    if job.state == "queued":
        where = position or (1, 1)
        return texts.STATUS_QUEUED.format(label=label, position=where[0], total=where[1])
    if job.state == "running":
        left = time_left(job)
        eta = texts.TIME_LEFT.format(left=left) if left else ""
        return texts.STATUS_RUNNING.format(label=label, percent=int(job.progress * 100), eta=eta)
    if job.state == "done":
        return texts.STATUS_DONE.format(
            label=label, seconds=texts.seconds_text(job_seconds(job)), device=device_text(job)
        )
    if job.state == "failed":
        return texts.STATUS_FAILED.format(label=label)
    return texts.STATUS_CANCELLED.format(label=label)


@dataclass
class _Entry:
    chat_id: int
    message_id: int
    last_edit: float = float("-inf")
    shown: tuple[str, str] | None = None  # (text, markup json) last sent
    pending: tuple[str, InlineKeyboardMarkup | None] | None = None
    final: bool = False
    task: asyncio.Task[None] | None = None


class StatusEditor:
    def __init__(
        self,
        interval_s: float = EDIT_INTERVAL_S,
        first_edit_after_s: float = FIRST_EDIT_AFTER_S,
        *,
        limiter: ApiLimiter | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.limiter = limiter
        self.first_edit_after_s = first_edit_after_s
        self.bot: Bot | None = None
        self._entries: dict[tuple[int, int], _Entry] = {}

    def update(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        markup: InlineKeyboardMarkup | None = None,
        *,
        final: bool = False,
    ) -> None:
        """Ask for the message to show `text`; returns at once, the edit happens when allowed."""
        key = (chat_id, message_id)
        entry = self._entries.get(key)
        if entry is None:
            # As if last edited just now, so the first edit comes `first_edit_after_s` from now.
            last_edit = time.monotonic() - self.interval_s + self.first_edit_after_s
            entry = self._entries[key] = _Entry(chat_id, message_id, last_edit)
        if entry.final and not final:
            return
        entry.final = entry.final or final
        entry.pending = (text, markup)
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._pump(key, entry), name=f"status edit {key}")

    async def _pump(self, key: tuple[int, int], entry: _Entry) -> None:
        try:
            while entry.pending is not None:
                wait = entry.last_edit + self.interval_s - time.monotonic()
                if self.limiter is not None:
                    # A chat busy with results (or other edits) gets this edit later, with whatever text
                    # is newest by then: edits fold together instead of queueing up behind results.
                    wait = max(wait, self.limiter.delay(entry.chat_id, low=True))
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                text, markup = entry.pending
                entry.pending = None
                shown = (text, markup.model_dump_json() if markup else "")
                if shown == entry.shown:
                    continue
                entry.last_edit = time.monotonic()
                if not await self._edit(entry, text, markup):
                    entry.pending = None
                    entry.final = True  # the message is gone: nothing more to show there
                    break
                entry.shown = shown
        finally:
            if entry.final and entry.pending is None and self._entries.get(key) is entry:
                del self._entries[key]

    async def _edit(self, entry: _Entry, text: str, markup: InlineKeyboardMarkup | None) -> bool:
        """Edit one message; False when it can never be edited again."""
        if self.bot is None:
            return False
        try:
            await self.bot.edit_message_text(
                text=text, chat_id=entry.chat_id, message_id=entry.message_id, reply_markup=markup
            )
        except TelegramBadRequest as exc:
            description = exc.message.lower()
            if "not modified" in description:
                return True
            if "not found" in description or "can't be edited" in description:
                return False
            log.warning("telegram: status edit refused: %s", exc.message)
        except TelegramAPIError as exc:
            log.warning("telegram: status edit failed: %s: %s", type(exc).__name__, exc.message)
        except Exception as exc:  # the session is closing or the network is gone; the next edit may work
            log.warning("telegram: status edit failed: %s", type(exc).__name__)
        return True

    async def drain(self, limit_s: float) -> None:
        """Wait (bounded) for pending edits, final ones included; used at shutdown."""
        tasks = [entry.task for entry in self._entries.values() if entry.task and not entry.task.done()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=limit_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class JobProgress:
    """The queue listener: keeps each Telegram job's status message in step with the job.

    Edits per message are bounded whatever the queue does: a queued job's position is rewritten only
    when it has at least halved (or reached 2 or 1), a running job's only when its progress passes a
    5 % step, and the editor folds whatever comes faster than it may edit into one edit.
    """

    def __init__(self, queue: JobQueue, editor: StatusEditor) -> None:
        self.queue = queue
        self.editor = editor
        self._states: dict[int, str] = {}
        self._shown: dict[int, int] = {}  # job id -> position (queued) or progress step (running) shown

    def __call__(self, job: Job) -> None:
        if job.source != "telegram" or job.state in FINAL_STATES:
            # Final states belong to the deliverer, which runs once per job, also after a restart.
            self._states.pop(job.id, None)
            self._shown.pop(job.id, None)
            if job.source == "telegram" and job.state in FINAL_STATES:
                self._refresh_queued(exclude=job.id)
            return
        previous = self._states.get(job.id)
        self._states[job.id] = job.state
        if previous == job.state == "running" and self._shown.get(job.id) == progress_step(job):
            return  # progress within the step already shown
        self.show(job)
        # A job that left the queue moved everyone behind it; one that joined moved nobody, and
        # re-editing every queued message for its sake made the edits grow with the queue's square.
        joined = previous is None and job.state == "queued"
        if previous != job.state and not joined:
            self._refresh_queued(exclude=job.id)

    def show(self, job: Job, position: tuple[int, int] | None = None) -> None:
        chat_id, message_id = job.reply.get("chat_id"), job.reply.get("status_message_id")
        if not chat_id or not message_id:
            return
        if job.state == "queued" and position is None:
            position = self.queue.position(job.id)
        if job.state == "queued" and position is not None:
            self._shown[job.id] = position[0]
        elif job.state == "running":
            self._shown[job.id] = progress_step(job)
        self.editor.update(
            int(chat_id), int(message_id), status_text(job, position), keyboards.cancel_job_keyboard(job.id)
        )

    def _refresh_queued(self, exclude: int) -> None:
        active = self.queue.active_jobs()  # one read for all positions, not one per message
        for place, other in enumerate(active, start=1):
            if other.id == exclude or other.source != "telegram" or other.state != "queued":
                continue
            shown = self._shown.get(other.id)
            if shown is None or (place < shown and (place <= 2 or place <= shown // 2)):
                self.show(other, (place, len(active)))
