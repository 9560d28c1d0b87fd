"""Choose the backend from settings and make sure the bucket exists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from nst_daemon.fsutil import ensure_dir
from nst_daemon.store.errors import error_code
from nst_daemon.store.local import LocalS3Client

if TYPE_CHECKING:
    from nst_daemon.config import Settings


def open_store(settings: Settings) -> Any:
    """A LocalS3Client under `settings.store_root`, or a boto3 S3 client when `store.backend = "s3"`.

    The bucket `store.bucket` is created when missing. For S3, credentials come from the usual AWS_*
    environment variables (or any other source boto3 searches).
    """
    store = settings.store
    if store.backend == "s3":
        # Imported here so a local-only install never loads (or needs) boto3.
        import boto3

        client: Any = boto3.client("s3", endpoint_url=store.endpoint_url or None, region_name=store.region)
    else:
        client = LocalS3Client(ensure_dir(settings.store_root, "the object store (store.root)"))
    ensure_bucket(client, store.bucket, store.region)
    return client


def ensure_bucket(client: Any, bucket: str, region: str = "us-east-1") -> None:
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise  # 403 and friends: creating would fail too, and the real cause is this one
    kwargs: dict[str, Any] = {"Bucket": bucket}
    # us-east-1 is the one region that rejects an explicit LocationConstraint.
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) != "BucketAlreadyOwnedByYou":  # another process won the race
            raise
