"""Log lines on stderr, with secrets redacted from every record.

Under systemd the journal stamps each line itself, so lines carry no time of their own there; anywhere else
(a terminal, a file, a pipe) each line starts with the local time.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from nst_daemon.config import mask_token

FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMED_FORMAT = "%(asctime)s " + FORMAT
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


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


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether `stream` is connected to the journal: systemd sets JOURNAL_STREAM to its "device:inode".

    Comparing the numbers, not just testing the variable, matters: a child started by a service inherits
    the variable even when its stderr was redirected to a file.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def formatter_for(stream: TextIO) -> logging.Formatter:
    if stream_is_journal(stream):
        return logging.Formatter(FORMAT)
    return logging.Formatter(TIMED_FORMAT, DATE_FORMAT)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(sys.stderr))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiogram's and aiohttp's per-request chatter is noise at info level.
    for noisy in ("aiogram.event", "aiohttp.access", "botocore", "urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
