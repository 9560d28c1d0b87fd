"""Conversation states; they live in the SQLite FSM storage, so a restart resumes at the same step."""

from __future__ import annotations

from aiogram.fsm.state import State, StatesGroup


class Quick(StatesGroup):
    choosing_style = State()  # data: photos (image refs), group (media_group_id), ask_id (the question)
    waiting_photo = State()  # data: style, chosen before the photo was sent


class Nst(StatesGroup):
    content = State()  # waiting for the content image
    styles = State()  # data: content, styles (image refs), group, ack_id


class SaveStyle(StatesGroup):
    images = State()  # /savestyle NAME: data name, styles (image refs with weights), group, ack_id
    naming = State()  # "Save as style…" in /nst: data styles; waiting for the name
