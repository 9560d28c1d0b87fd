"""Import aiogram with its Telegram types left unbuilt until first use.

aiogram declares every type with pydantic's `defer_build=True`, then `aiogram/types/__init__.py` forces a
`model_rebuild` of all of them so their forward references resolve against one shared namespace. Building
the validators of several hundred models costs about 100 MB of resident memory and 3–4 s of start-up, on a
home box where the bot sits idle most of the day and touches a dozen types.

During that import, `model_rebuild` is redirected: aiogram's namespace is kept instead of used. After the
import, the names in it are added to the globals of each aiogram module that defines a model left unbuilt
(the types, and the methods whose fields are unbuilt types). Those are the names aiogram imports only under
`TYPE_CHECKING`, and module globals are where pydantic looks when it completes a deferred model on first
use, or builds one nested in another (aiogram's `Response[Message]`, made per call). So models build when a
message first needs them and resolve exactly as aiogram's eager rebuild would. The bot warms up the few
models every update needs when it starts (`warm_up`), so the first message does not stall the loop.

Measured (scripts/bench_bot_internals.py, 3 fresh interpreters each, on a 2-core box at load ~10, so
the seconds are inflated; the ratio and the memory are not): importing the bot took 10.1 s lazily against
22.5 s eagerly, with 93 MB against 189 MB of peak resident memory; the warm-up costs 1.6 s once, and the
first update parses as fast as with eager types. That is what keeping a patch of pydantic's
`model_rebuild` buys; `tests/test_bot_lazy_types.py` fails if an aiogram or pydantic upgrade stops it
from deferring (most types still unbuilt after the import) or leaves a name unresolved.

Importing this module does it, so `nst_daemon/bot/__init__.py` imports it before anything else touches
aiogram. `tests/test_bot_lazy_types.py` completes every aiogram model this way, so a name that failed to
resolve would fail the tests, not a user's message.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

TYPES_PACKAGE = "aiogram.types"


@contextlib.contextmanager
def _deferred_type_rebuilds(namespace: dict[str, Any]) -> Iterator[None]:
    eager_rebuild = BaseModel.__dict__["model_rebuild"]

    def keep_namespace(cls: type[BaseModel], *args: Any, _types_namespace: Any = None, **kwargs: Any) -> Any:
        if _types_namespace is not None and cls.__module__.startswith(TYPES_PACKAGE + "."):
            namespace.update(_types_namespace)
            return None
        return eager_rebuild.__func__(cls, *args, _types_namespace=_types_namespace, **kwargs)

    BaseModel.model_rebuild = classmethod(keep_namespace)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        BaseModel.model_rebuild = eager_rebuild  # type: ignore[method-assign]


def aiogram_models() -> list[type[BaseModel]]:
    """Every pydantic model aiogram defines (types, methods and the rest), once each."""
    found: dict[type[BaseModel], None] = {}
    pending = list(BaseModel.__subclasses__())
    while pending:
        model = pending.pop()
        if model not in found:
            found[model] = None
            pending.extend(model.__subclasses__())
    return [model for model in found if model.__module__.split(".")[0] == "aiogram"]


def import_aiogram() -> None:
    """Import aiogram with its models unbuilt; a no-op when something imported it already."""
    if TYPES_PACKAGE in sys.modules:
        return
    namespace: dict[str, Any] = {}
    with _deferred_type_rebuilds(namespace):
        import aiogram  # noqa: F401
    for module_name in {model.__module__ for model in aiogram_models() if not model.__pydantic_complete__}:
        module_globals = vars(sys.modules[module_name])
        for name, value in namespace.items():
            module_globals.setdefault(name, value)


def warm_up() -> None:
    """Build the models every incoming update needs (about 0.5 s of CPU), ahead of the first message."""
    from aiogram.types import Message, Update

    for model in (Update, Message):
        model.model_rebuild()


import_aiogram()
