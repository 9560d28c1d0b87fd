"""The CLI's rich consoles: a terminal gets rich's usual layout, anything else gets lines that never wrap.

rich sizes a console that is not a terminal at 80 columns and hard-wraps long lines there, so a pipe or a
test that reads `wrote /a/long/path/monet.png (64×48) in 6.2 s on ...` got it in two pieces. When the
stream is not a terminal, text is printed as one line (`soft_wrap`) and tables get all the width they
need, unless COLUMNS asks for a width explicitly (then tables fit it; text still never wraps).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console

# Wide enough for any table nstd prints; a table is only as wide as its content, this is just no cap.
UNLIMITED_WIDTH = 10_000


def make_console(*, stderr: bool = False, file: TextIO | None = None) -> Console:
    """A Console for stdout (or stderr, or `file`) that never wraps or truncates when not a terminal."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    if is_terminal(stream):
        return Console(stderr=stderr, file=file)
    width = None if os.environ.get("COLUMNS", "").strip().isdigit() else UNLIMITED_WIDTH
    return Console(stderr=stderr, file=file, soft_wrap=True, width=width)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
