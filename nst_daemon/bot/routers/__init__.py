"""One router per feature; `all_routers()` gives fresh ones in the order they must be tried."""

from __future__ import annotations

from aiogram import Router

from nst_daemon.bot.routers import (
    cancel,
    errors,
    fallback,
    nst_flow,
    quick,
    savestyle,
    settings,
    start,
    status,
    styles,
)


def all_routers() -> list[Router]:
    # Commands first (they work in every state), then the flows, then the catch-alls, then the reply
    # to any failure.
    modules = (cancel, start, styles, status, settings, savestyle, nst_flow, quick, fallback, errors)
    return [module.router() for module in modules]
