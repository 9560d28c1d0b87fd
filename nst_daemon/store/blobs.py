"""Thin conveniences over the S3 interface for whole-object reads and writes."""

from __future__ import annotations

from typing import Any

from nst_daemon.store.errors import is_not_found


def put_bytes(
    client: Any,
    bucket: str,
    key: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
) -> str:
    """Store `data` under `key`; returns the ETag (quoted MD5 hex)."""
    response = client.put_object(
        Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}
    )
    return str(response["ETag"])


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """The whole body of `key`; raises ClientError NoSuchKey when it is missing."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


def object_exists(client: Any, bucket: str, key: str) -> bool:
    """Whether `key` is stored; other errors (no access, no bucket) are raised."""
    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
    return True
