"""Plain log lines on stderr (journald adds timestamps), with secrets redacted from every record."""

from __future__ import annotations

import logging
import sys

from nst_daemon.config import mask_token

FORMAT = "%(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replaces known secrets in the rendered message, whichever library logged it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}

    def add(self, secret: str | None) -> None:
        if secret:
            self.secrets[secret] = mask_token(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        changed = False
        for secret, masked in self.secrets.items():
            if secret in message:
                message = message.replace(secret, masked)
                changed = True
            if record.exc_text and secret in record.exc_text:
                record.exc_text = record.exc_text.replace(secret, masked)
        if changed:
            record.msg, record.args = message, None
        return True


redactor = RedactSecrets()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiogram's and aiohttp's per-request chatter is noise at info level.
    for noisy in ("aiogram.event", "aiohttp.access", "botocore", "urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
