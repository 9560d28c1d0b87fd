"""/status: the user's jobs in progress (queue position, progress) and the last few finished ones."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from nst_daemon.bot import texts
from nst_daemon.bot.context import Services
from nst_daemon.bot.status_messages import status_text
from nst_daemon.jobs import FINAL_STATES


async def status(message: Message, services: Services) -> None:
    assert message.from_user is not None
    owner = str(message.from_user.id)
    queue = services.queue
    active = queue.active_jobs(owner)
    recent = [job for job in queue.recent_jobs(owner, limit=5) if job.state in FINAL_STATES]
    if not active and not recent:
        await message.answer(texts.NO_JOBS)
        return
    lines = []
    if active:
        lines.append(texts.STATUS_HEADER)
        for job in active:
            position = queue.position(job.id) if job.state == "queued" else None
            lines.append(f"#{job.id} {status_text(job, position)} /cancel_{job.id}")
    if recent:
        lines.append(texts.RECENT_HEADER)
        for job in recent:
            line = f"#{job.id} {status_text(job, None)}"
            if job.state == "failed" and job.error:
                line += f" ({job.error})"
            lines.append(line)
    await message.answer("\n".join(lines))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="status")
    feature.message.register(status, Command("status"))
    return feature
