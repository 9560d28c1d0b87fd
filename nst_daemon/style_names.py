"""One spelling rule for pretrained style names, wherever a person types one: the CLI's --style, a
Telegram caption, the config's default style."""

from __future__ import annotations

import re
import unicodedata


def normalize_style(text: str) -> str:
    """'Van Gogh', 'Van-Gogh', 'VANGOGH', 'ukiyo-e', 'Cézanne', 'Summer → Winter' -> the catalog's style
    name ('vangogh', 'ukiyoe', 'cezanne', 'summer2winter'). Unknown text comes back squeezed the same way,
    for the caller to refuse."""
    # NFKD splits an accented letter into the letter and its accent, which the filter then drops.
    folded = unicodedata.normalize("NFKD", text.replace("→", "2")).casefold()
    return re.sub(r"[^a-z0-9]", "", folded)
