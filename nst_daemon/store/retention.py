"""Delete old objects through the S3 interface alone, so the same code serves both backends."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts


def expire(client: Any, bucket: str, prefix: str, older_than: datetime | timedelta) -> int:
    """Delete objects under `prefix` last modified before `older_than` (a time, or an age from now).

    Returns how many were deleted. Keys the backend refuses to delete are logged and not counted.
    """
    if isinstance(older_than, timedelta):
        cutoff = datetime.now(UTC) - older_than
    elif older_than.tzinfo is None:
        raise ValueError("older_than must be timezone-aware (S3 timestamps are UTC)")
    else:
        cutoff = older_than
    # List everything first: deleting while paginating relies on how each backend builds its tokens.
    expired = [entry["Key"] for entry in _list_all(client, bucket, prefix) if entry["LastModified"] < cutoff]
    deleted = 0
    for start in range(0, len(expired), DELETE_BATCH):
        batch = expired[start : start + DELETE_BATCH]
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
        )
        errors = response.get("Errors", [])
        for error in errors:
            log.warning("retention: could not delete %s/%s: %s", bucket, error.get("Key"), error.get("Code"))
        deleted += len(batch) - len(errors)
    return deleted


def _list_all(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = client.list_objects_v2(**kwargs)
        entries.extend(page.get("Contents", []))
        if not page.get("IsTruncated"):
            return entries
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
