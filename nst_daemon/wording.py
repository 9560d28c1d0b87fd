"""Wording shared by every surface: the CLI, the bot, the engines' labels and the logs."""

from __future__ import annotations


def plural(count: int) -> str:
    """The suffix that makes a regular noun agree with `count`: "" for one, "s" otherwise."""
    return "" if count == 1 else "s"
