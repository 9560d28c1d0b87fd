"""What nothing else handled: unknown commands, chatter, and messages that are not images."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import Message

from nst_daemon.bot import texts
from nst_daemon.bot.context import Services
from nst_daemon.bot.status_messages import job_label


async def unknown_command(message: Message) -> None:
    await message.answer(texts.UNKNOWN_COMMAND)


async def chatter(message: Message, services: Services) -> None:
    assert message.from_user is not None
    active = services.queue.active_jobs(str(message.from_user.id))
    if active:
        summary = ", ".join(f"#{job.id} {job_label(job)}: {job.state}" for job in active)
        await message.answer(texts.JOB_IN_PROGRESS.format(summary=summary))
        return
    await message.answer(texts.IDLE_HINT)


async def unsupported(message: Message) -> None:
    await message.answer(texts.UNSUPPORTED)


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="fallback")
    feature.message.register(unknown_command, F.text.startswith("/"))
    feature.message.register(chatter, F.text)
    feature.message.register(unsupported)
    return feature
