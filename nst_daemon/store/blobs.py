"""Thin conveniences over the S3 interface for whole-object reads and writes."""

from __future__ import annotations

from typing import Any


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
