"""S3-compatible object store: a local filesystem client, or real S3/MinIO through boto3.

The daemon talks only to the boto3 S3 client interface (create_bucket, head_bucket, put_object,
get_object, head_object, list_objects_v2, delete_object, delete_objects, copy_object); `open_store`
picks the backend from configuration. Nothing here imports boto3 unless the s3 backend is chosen.
"""

from nst_daemon.store.blobs import get_bytes, object_exists, put_bytes
from nst_daemon.store.errors import is_not_found
from nst_daemon.store.factory import ensure_bucket, open_store
from nst_daemon.store.local import LocalS3Client
from nst_daemon.store.retention import expire

__all__ = [
    "LocalS3Client",
    "ensure_bucket",
    "expire",
    "get_bytes",
    "is_not_found",
    "object_exists",
    "open_store",
    "put_bytes",
]
