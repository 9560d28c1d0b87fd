"""ClientError values shaped exactly as botocore parses them from an S3 error response."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})


def response_metadata(status: int = 200) -> dict[str, Any]:
    return {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def client_error(operation: str, code: str, message: str, status: int, **extra: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message, **extra}, "ResponseMetadata": response_metadata(status)},
        operation,
    )


def not_found(operation: str) -> ClientError:
    # HEAD responses carry no body, so botocore can only report the bare status code.
    return client_error(operation, "404", "Not Found", 404)


def no_such_bucket(operation: str, bucket: str) -> ClientError:
    return client_error(
        operation, "NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket
    )


def no_such_key(operation: str, key: str) -> ClientError:
    return client_error(operation, "NoSuchKey", "The specified key does not exist.", 404, Key=key)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    """True for a missing object or bucket on either backend (GET says NoSuchKey, HEAD says 404)."""
    return isinstance(exc, ClientError) and error_code(exc) in NOT_FOUND_CODES
