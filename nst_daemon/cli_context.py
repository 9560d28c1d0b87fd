"""What every `nstd` command shares: the invocation's state (--config, --debug), its settings loaded once,
the consoles, and the engine choice the registry offers. cli.py and cli_admin.py use it."""

from __future__ import annotations

import contextlib
import logging
from enum import StrEnum
from pathlib import Path

from nst_daemon.config import ConfigError, Settings, load_settings
from nst_daemon.engines import registry
from nst_daemon.logs import redactor
from nst_daemon.terminal import make_console

console = make_console()
err_console = make_console(stderr=True)


class _State:
    config_path: Path | None = None
    debug: bool = False
    settings: Settings | None = None


state = _State()


# The engines that take style images, as the registry has them (adain, nst, and any plugin's).
EngineChoice = StrEnum("EngineChoice", {plugin.key: plugin.key for plugin in registry.image_engines()})  # type: ignore[misc]


def settings() -> Settings:
    """Settings, loaded once per invocation on first use so that --help never needs a config."""
    if state.settings is None:
        state.settings = load_settings(state.config_path)
        if not getattr(state, "log_level_explicit", False):
            logging.getLogger().setLevel(state.settings.daemon.log_level.upper())
        with contextlib.suppress(ConfigError):  # reported by the command that needs the token
            redactor.add(state.settings.telegram_token())
    return state.settings
