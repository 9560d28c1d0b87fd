"""Bucket and key rules, and the reversible mapping from an object key to one flat file name.

Keys are never used as paths. Each key becomes a single file name inside its bucket directory, so "a"
and "a/b" can both exist and no key can reach outside the bucket, whatever it contains.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote

from botocore.exceptions import ParamValidationError

from nst_daemon.store.errors import client_error

MAX_KEY_BYTES = 1024
# File names beginning with this belong to the store itself (temp files); keys may not claim them.
RESERVED_PREFIX = ".nstd-"
# Never produced by the percent-encoding below, so a hashed name cannot collide with an encoded one.
HASHED_MARK = "="
# Well under NAME_MAX (255 bytes) on every common filesystem.
_MAX_ENCODED_NAME = 200
# Lowercase only: an encoded name stays unique on case-insensitive filesystems too.
_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")

_TOO_LONG = f"longer than {MAX_KEY_BYTES} bytes"
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def check_bucket(bucket: object, operation: str) -> str:
    if not isinstance(bucket, str):
        raise ParamValidationError(report=f"Invalid type for parameter Bucket, value: {bucket!r}")
    if (
        not _BUCKET_RE.fullmatch(bucket)
        or ".." in bucket
        or _IPV4_RE.fullmatch(bucket)
        or bucket.startswith(("xn--", "sthree-"))
        or bucket.endswith(("-s3alias", "--ol-s3"))
    ):
        raise client_error(
            operation, "InvalidBucketName", "The specified bucket is not valid.", 400, BucketName=bucket
        )
    return bucket


def check_key(key: object, operation: str) -> str:
    if not isinstance(key, str) or not key:
        raise ParamValidationError(report=f"Invalid value for parameter Key, value: {key!r}")
    problem = key_problem(key)
    if problem == _TOO_LONG:
        raise client_error(operation, "KeyTooLongError", "Your key is too long", 400)
    if problem is not None:
        raise client_error(
            operation, "InvalidKey", f"Object key {key!r} is not allowed: {problem}.", 400, Key=key
        )
    return key


def key_problem(key: str) -> str | None:
    """Why the local store refuses a key, or None."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return _TOO_LONG
    if "\x00" in key or "\\" in key:
        return "NUL and backslash are not allowed"
    if key.startswith("/"):
        return "absolute keys are not allowed"
    for segment in key.split("/"):
        if segment in (".", ".."):
            return "'.' and '..' segments are not allowed"
        if segment.startswith(RESERVED_PREFIX):
            return f"segments beginning with {RESERVED_PREFIX!r} are reserved for the store"
    return None


def filename_for(key: str) -> str:
    encoded = "".join(
        char if char in _LITERAL else "".join(f"%{byte:02X}" for byte in char.encode("utf-8")) for char in key
    )
    if len(encoded) <= _MAX_ENCODED_NAME:
        return encoded
    return HASHED_MARK + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_from_filename(name: str) -> str | None:
    """The key an encoded file name stands for; None for hashed names (read the header) and foreign files."""
    if name.startswith((HASHED_MARK, RESERVED_PREFIX)):
        return None
    try:
        key = unquote(name, errors="strict")
    except UnicodeDecodeError:
        return None
    # Only the canonical spelling counts, so a stray file can never shadow or duplicate a key.
    return key if filename_for(key) == name and key_problem(key) is None else None
