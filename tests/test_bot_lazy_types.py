"""aiogram's types are built on first use (see nst_daemon/bot/lazy_types.py), and every one of them can be.

Run in a fresh interpreter: the test process may have imported aiogram before, eagerly.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json
import nst_daemon.bot  # imports aiogram through lazy_types
import aiogram.methods as methods
import aiogram.types as types
from pydantic import BaseModel

def models(module):
    found = (getattr(module, name) for name in module.__all__)
    return [m for m in found if isinstance(m, type) and issubclass(m, BaseModel)]

all_types, all_methods = models(types), models(methods)
lazy_after_import = sum(not m.__pydantic_complete__ for m in all_types)

update = types.Update.model_validate_json(json.dumps({
    "update_id": 1,
    "message": {
        "message_id": 5, "date": 0, "chat": {"id": 7, "type": "private"},
        "from": {"id": 7, "is_bot": False, "first_name": "A"},
        "photo": [{"file_id": "f", "file_unique_id": "u", "width": 4, "height": 3}],
        "caption": "monet", "caption_entities": [{"type": "bold", "offset": 0, "length": 5}],
    },
}))
markup = types.InlineKeyboardMarkup(
    inline_keyboard=[[types.InlineKeyboardButton(text="Cancel", callback_data="cancel:1")]]
)
send = methods.SendPhoto(
    chat_id=7, photo=types.BufferedInputFile(b"jpeg", "result.jpg"), caption="done", reply_markup=markup
)

from nst_daemon.bot.lazy_types import aiogram_models

everything = aiogram_models()
incomplete = []
for model in everything:
    if not model.__pydantic_complete__ and not model.model_rebuild(raise_errors=True):
        incomplete.append(model.__name__)
print(json.dumps({
    "types": len(all_types),
    "methods": len(all_methods),
    "models": len(everything),
    "lazy_after_import": lazy_after_import,
    "photo": update.message.photo[0].file_id,
    "entity": update.message.caption_entities[0].type,
    "button": send.reply_markup.inline_keyboard[0][0].callback_data,
    "incomplete": incomplete,
}))
"""


def test_aiogram_types_build_lazily_and_every_one_completes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["types"] > 200 and result["methods"] > 100
    # The point of the lazy import: nearly all types are still unbuilt after it.
    assert result["lazy_after_import"] > result["types"] * 0.9
    # Models built on first use behave as aiogram's eagerly built ones.
    assert (result["photo"], result["entity"], result["button"]) == ("f", "bold", "cancel:1")
    # And every aiogram model (types, methods, the rest) resolves its forward references when completed.
    assert result["models"] >= result["types"] + result["methods"]
    assert result["incomplete"] == []
