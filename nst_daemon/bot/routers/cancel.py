"""/cancel: leave the current step; with no step in progress, stop the user's queued or running jobs.

/cancel_<id> (listed by /status) and the Cancel button on a status message stop one job. A running job
is stopped for real: the queue sets its cancel event, the engine stops at its next step, and the
deliverer reports "cancelled" with no result.
"""

from __future__ import annotations

import re

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from nst_daemon.bot import keyboards, texts
from nst_daemon.bot.callbacks import CallbackAnswer
from nst_daemon.bot.context import Services
from nst_daemon.bot.status_messages import job_label
from nst_daemon.jobs import Job

FLOW_LABELS = {"Nst": "multi-style NST", "Quick": "style choice", "SaveStyle": "style you were saving"}


async def cancel_job(services: Services, job: Job) -> str:
    was_running = job.state == "running"
    if not await services.queue.cancel(job.id):
        return texts.CANCEL_NOT_FOUND.format(job=job.id)
    template = texts.CANCEL_RUNNING if was_running else texts.CANCEL_QUEUED
    return template.format(job=job.id, label=job_label(job))


def _own_active_job(services: Services, user_id: int, job_id: int) -> Job | None:
    job = services.queue.get(job_id)
    if (
        job is None
        or job.owner != str(user_id)
        or job.source != "telegram"
        or job.state not in ("queued", "running")
    ):
        return None
    return job


async def cancel(message: Message, state: FSMContext, services: Services) -> None:
    assert message.from_user is not None
    owner = str(message.from_user.id)
    current = await state.get_state()
    if current is not None:
        await state.clear()
        what = FLOW_LABELS.get(current.split(":")[0], "current step")
        reply = f"OK, I dropped the {what}. Send a new image to start again."
        active = services.queue.active_jobs(owner)
        if active:
            count = len(active)
            reply += "\n" + texts.STILL_RUNNING.format(
                count=count, s=texts.plural(count), them="it" if count == 1 else "them"
            )
        await message.answer(reply)
        return
    active = [job for job in services.queue.active_jobs(owner) if job.source == "telegram"]
    if not active:
        await message.answer(texts.NOTHING_TO_CANCEL)
        return
    lines = [await cancel_job(services, job) for job in active]
    await message.answer("\n".join(lines))


async def cancel_one(message: Message, command: CommandObject, services: Services) -> None:
    assert message.from_user is not None and command.regexp_match is not None
    job_id = int(command.regexp_match.group(1))
    job = _own_active_job(services, message.from_user.id, job_id)
    if job is None:
        await message.answer(texts.CANCEL_NOT_FOUND.format(job=job_id))
        return
    await message.answer(await cancel_job(services, job))


async def cancel_button(
    query: CallbackQuery, callback_data: keyboards.CancelJob, services: Services, answer: CallbackAnswer
) -> None:
    job = _own_active_job(services, query.from_user.id, callback_data.job)
    if job is None:
        await answer(texts.CANCEL_NOT_FOUND.format(job=callback_data.job))
        return
    await answer(await cancel_job(services, job))


def router() -> Router:
    """A new router each call: aiogram attaches a router to one dispatcher only."""
    feature = Router(name="cancel")
    feature.message.register(cancel, Command("cancel"))
    feature.message.register(cancel_one, Command(re.compile(r"cancel_(\d+)")))
    feature.callback_query.register(cancel_button, keyboards.CancelJob.filter())
    return feature
