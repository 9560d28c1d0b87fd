"""A job's objects in the object store: its inputs, result and report, all under `jobs/<id>/`.

Plain blocking calls (boto3's or the local store's): callers on the event loop run them through
`asyncio.to_thread`, and never while holding a lock."""

from __future__ import annotations

from typing import Any

from nst_daemon.job_model import job_prefix
from nst_daemon.store import get_bytes


class JobObjects:
    def __init__(self, store: Any, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.store.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return get_bytes(self.store, self.bucket, key)

    def delete_job(self, job_id: int) -> None:
        """Every object of job `job_id`."""
        listing = self.store.list_objects_v2(Bucket=self.bucket, Prefix=job_prefix(job_id))
        keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
        if keys:
            self.store.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
