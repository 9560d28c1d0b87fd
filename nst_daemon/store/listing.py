"""ListObjectsV2 paging over a sorted list of keys, independent of where the keys live."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

PAGE_LIMIT = 1000


@dataclass
class Page:
    keys: list[str] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    # The last key or common prefix returned; the next page starts after it.
    last_item: str | None = None


def list_page(
    sorted_keys: Sequence[str],
    *,
    prefix: str = "",
    delimiter: str = "",
    max_keys: int = PAGE_LIMIT,
    start_after: str = "",
    after_item: str | None = None,
) -> Page:
    """One page of keys and common prefixes.

    `sorted_keys` must be in code point order, which for str is the same as S3's UTF-8 byte order.
    """
    page = Page()
    limit = max(0, min(max_keys, PAGE_LIMIT))
    if limit == 0:
        return page
    start = bisect_left(sorted_keys, prefix)
    if start_after:
        start = max(start, bisect_right(sorted_keys, start_after))
    if after_item is not None:
        start = max(start, bisect_right(sorted_keys, after_item))
    for index in range(start, len(sorted_keys)):
        key = sorted_keys[index]
        if not key.startswith(prefix):
            break  # sorted, so nothing further can match
        item, is_prefix = key, False
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                item, is_prefix = key[: cut + len(delimiter)], True
        # Keys under a common prefix that ended the previous page must not bring it back.
        if after_item is not None and item <= after_item:
            continue
        if is_prefix and page.common_prefixes and page.common_prefixes[-1] == item:
            continue
        if len(page.keys) + len(page.common_prefixes) == limit:
            page.truncated = True
            break
        (page.common_prefixes if is_prefix else page.keys).append(item)
        page.last_item = item
    return page


def encode_token(item: str) -> str:
    return base64.urlsafe_b64encode(item.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    """The item a continuation token resumes after; ValueError for a token this store did not issue."""
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError(token) from exc
