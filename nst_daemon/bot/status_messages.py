"""One status message per job, edited in place as the job moves: queued, stylizing N%, done.

Telegram allows few edits per message, so edits are throttled per message: at most one every
`interval_s`; newer text replaces older pending text, and the latest is flushed when the window opens.
The first edit waits `first_edit_after_s` after the message is first updated: a job that starts at once
goes from "got it" to "queued" to "stylizing" within milliseconds, and a quick one is done before the
second is up, so the waiting folds those into one edit instead of racing the result to the same chat.
A final text is never dropped or overtaken by a late progress update. With the Bot API limiter
(api_limits.py), an edit also waits until its chat has a free slot that no result needs.

Live preview: a painted NST job's engine sends a small JPEG every few seconds. The first one turns the
text status into a photo status (a photo captioned with the status text; the text message is deleted,
Telegram cannot add media to a text message), later ones replace its media, at most one every
PREVIEW_INTERVAL_S; frames that come faster fold into the newest. A refused edit (429, "not modified",
an outage) only skips that frame: the editor runs beside the job and the job never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, InputMediaPhoto

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.api_limits import ApiLimiter
from nst_daemon.jobs import FINAL_STATES, Job, JobQueue

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 3.0
PREVIEW_INTERVAL_S = 5.0  # at most one new picture per status message in this time
FIRST_EDIT_AFTER_S = 1.0
FINISHED_REMEMBERED = 10_000  # final status messages kept in mind against late updates (~100 bytes each)
PROGRESS_STEP_PERCENT = 5
MIN_PROGRESS_FOR_ETA = 0.05
MIN_ELAPSED_FOR_ETA_S = 3.0


def job_label(job: Job) -> str:
    return job.style_label


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
    preview: bytes | None = None  # a picture waiting to be shown
    photo_id: int | None = None  # the photo status that replaced the text message, once there is one
    last_media: float = float("-inf")


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
        self.preview_interval_s = PREVIEW_INTERVAL_S
        self.bot: Bot | None = None
        self._entries: dict[tuple[int, int], _Entry] = {}
        # Messages that have shown their final state. A progress or queue update can arrive after the
        # delivery that ended the job (listeners run as tasks); it must not turn "done" back into
        # "stylizing". Bounded: the oldest are forgotten first.
        self._finished: OrderedDict[tuple[int, int], None] = OrderedDict()

    def update(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        markup: InlineKeyboardMarkup | None = None,
        *,
        final: bool = False,
        preview: bytes | None = None,
    ) -> None:
        """Ask for the message to show `text` (and the picture `preview`, a small JPEG); returns at once,
        the edit happens when allowed."""
        key = (chat_id, message_id)
        if not final and key in self._finished:
            return
        entry = self._entries.get(key)
        if entry is None:
            # As if last edited just now, so the first edit comes `first_edit_after_s` from now.
            last_edit = time.monotonic() - self.interval_s + self.first_edit_after_s
            entry = self._entries[key] = _Entry(chat_id, message_id, last_edit)
        if entry.final and not final:
            return
        if preview is not None or final:
            # A final state without a picture drops a frame still waiting: it would come after the end.
            entry.preview = preview
        entry.final = entry.final or final
        entry.pending = (text, markup)
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._pump(key, entry), name=f"status edit {key}")

    async def _pump(self, key: tuple[int, int], entry: _Entry) -> None:
        try:
            while entry.pending is not None:
                wait = entry.last_edit + self.interval_s - time.monotonic()
                if entry.preview is not None:
                    wait = max(wait, entry.last_media + self.preview_interval_s - time.monotonic())
                if self.limiter is not None:
                    # A chat busy with results (or other edits) gets this edit later, with whatever text
                    # is newest by then: edits fold together instead of queueing up behind results.
                    wait = max(wait, self.limiter.delay(entry.chat_id, low=True))
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                text, markup = entry.pending
                preview, entry.pending, entry.preview = entry.preview, None, None
                shown = (text, markup.model_dump_json() if markup else "")
                if shown == entry.shown and preview is None:
                    continue
                entry.last_edit = time.monotonic()
                if preview is not None:
                    entry.last_media = entry.last_edit
                    edited = await self._show_picture(entry, text, markup, preview)
                else:
                    edited = await self._edit(entry, text, markup)
                if edited is False:
                    entry.pending = None
                    entry.final = True  # the message is gone: nothing more to show there
                    break
                entry.shown = shown
        finally:
            if entry.final and entry.pending is None and self._entries.get(key) is entry:
                del self._entries[key]
                self._finished[key] = None
                while len(self._finished) > FINISHED_REMEMBERED:
                    self._finished.popitem(last=False)

    def is_photo(self, chat_id: int, message_id: int) -> bool:
        """Whether this status message has become a photo (a preview was shown in it)."""
        entry = self._entries.get((chat_id, message_id))
        return entry is not None and entry.photo_id is not None

    async def _show_picture(
        self, entry: _Entry, text: str, markup: InlineKeyboardMarkup | None, picture: bytes
    ) -> bool | None:
        """Show `picture` captioned `text`: the first one replaces the text status with a photo status."""
        if self.bot is None:
            return False
        if entry.photo_id is not None:
            media = InputMediaPhoto(media=BufferedInputFile(picture, filename="preview.jpg"), caption=text)
            outcome = await self._attempt(
                self.bot.edit_message_media(
                    media=media, chat_id=entry.chat_id, message_id=entry.photo_id, reply_markup=markup
                ),
                not_modified=None,  # a picture Telegram would not take: this frame is skipped
            )
            if outcome is None and entry.final:
                # The last picture was refused: the final caption must still say how the job ended.
                return await self._edit(entry, text, markup)
            return outcome
        try:
            sent = await self.bot.send_photo(
                chat_id=entry.chat_id,
                photo=BufferedInputFile(picture, filename="preview.jpg"),
                caption=text,
                reply_markup=markup,
            )
        except Exception as exc:  # no photo status this time: the text status goes on, the next frame retries
            log.warning("telegram: preview not sent: %s", getattr(exc, "message", type(exc).__name__))
            return True
        entry.photo_id = sent.message_id
        try:
            await self.bot.delete_message(chat_id=entry.chat_id, message_id=entry.message_id)
        except Exception as exc:  # a stale "stylizing" text is untidy, not wrong: the photo below is current
            log.info("telegram: old status message not deleted: %s", getattr(exc, "message", exc))
        return True

    async def _edit(self, entry: _Entry, text: str, markup: InlineKeyboardMarkup | None) -> bool | None:
        """Edit one message's text (a photo status: its caption); False when it can never be edited again."""
        if self.bot is None:
            return False
        if entry.photo_id is not None:
            return await self._attempt(
                self.bot.edit_message_caption(
                    chat_id=entry.chat_id, message_id=entry.photo_id, caption=text, reply_markup=markup
                )
            )
        return await self._attempt(
            self.bot.edit_message_text(
                text=text, chat_id=entry.chat_id, message_id=entry.message_id, reply_markup=markup
            )
        )

    @staticmethod
    async def _attempt(call: Awaitable[object], not_modified: bool | None = True) -> bool | None:
        """Make one edit call: True when it shows, False when the message can never be edited again,
        None when this edit failed (the next one may work)."""
        try:
            await call
        except TelegramBadRequest as exc:
            description = exc.message.lower()
            if "not modified" in description:
                return not_modified
            if "not found" in description or "can't be edited" in description:
                return False
            log.warning("telegram: status edit refused: %s", exc.message)
        except TelegramAPIError as exc:
            log.warning("telegram: status edit failed: %s: %s", type(exc).__name__, exc.message)
        except Exception as exc:  # the session is closing or the network is gone; the next edit may work
            log.warning("telegram: status edit failed: %s", type(exc).__name__)
        else:
            return True
        return None

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
        self._running: dict[int, Job] = {}  # the latest state of each running job, for its previews

    def __call__(self, job: Job) -> None:
        if job.source != "telegram" or job.state in FINAL_STATES:
            # Final states belong to the deliverer, which runs once per job, also after a restart.
            self._states.pop(job.id, None)
            self._shown.pop(job.id, None)
            self._running.pop(job.id, None)
            if job.source == "telegram" and job.state in FINAL_STATES:
                self._refresh_queued(exclude=job.id)
            return
        previous = self._states.get(job.id)
        self._states[job.id] = job.state
        if job.state == "running":
            self._running[job.id] = job
        else:
            self._running.pop(job.id, None)
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

    def preview(self, job_id: int, picture: bytes) -> None:
        """The queue's preview listener: a running job's newest picture goes into its status message."""
        job = self._running.get(job_id)
        if job is None or not job.params.get("preview"):
            return
        chat_id, message_id = job.reply.get("chat_id"), job.reply.get("status_message_id")
        if not chat_id or not message_id:
            return
        self.editor.update(
            int(chat_id),
            int(message_id),
            status_text(job, None),
            keyboards.cancel_job_keyboard(job.id),
            preview=picture,
        )

    def _refresh_queued(self, exclude: int) -> None:
        active = self.queue.active_jobs()  # one read for all positions, not one per message
        for place, other in enumerate(active, start=1):
            if other.id == exclude or other.source != "telegram" or other.state != "queued":
                continue
            shown = self._shown.get(other.id)
            if shown is None or (place < shown and (place <= 2 or place <= shown // 2)):
                self.show(other, (place, len(active)))
