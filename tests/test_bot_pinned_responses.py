"""The bot keeps aiogram's per-method response types alive, so a reply is not parsed by a freshly built model.

Run in a fresh interpreter: the response type must not have been made (or pinned) by earlier tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import asyncio, gc, json, weakref
import nst_daemon.bot  # aiogram as the daemon imports it
from aiogram.methods import GetFile
from aiogram.methods.base import Response
from nst_daemon.bot.pinned_responses import PinResponseTypes

def response_type_ref():
    # Made inside a function, as aiogram's check_response makes it for every reply.
    return weakref.ref(Response[GetFile.__returning__])

unpinned = response_type_ref()
gc.collect()
collected_without_pin = unpinned() is None

middleware = PinResponseTypes()
async def call_through(mw):
    async def make_request(bot, method):
        return "sent"
    return await mw(make_request, None, GetFile(file_id="f"))
passed_on = asyncio.run(call_through(middleware))
pinned = response_type_ref()
gc.collect()
print(json.dumps({
    "collected_without_pin": collected_without_pin,
    "alive_with_pin": pinned() is not None,
    "same_type": pinned() is middleware.pinned.get(GetFile),
    "passed_on": passed_on,
}))
"""


def test_response_types_outlive_a_garbage_collection_once_pinned() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The problem is real: unpinned, the type is freed and the next reply builds it again.
    assert result["collected_without_pin"] is True
    assert result["alive_with_pin"] is True and result["same_type"] is True
    assert result["passed_on"] == "sent"
