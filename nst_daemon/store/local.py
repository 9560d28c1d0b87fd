"""LocalS3Client: the boto3 S3 client methods the daemon uses, backed by a directory.

Layout: `<root>/<bucket>/<one file per object>`. keys.py maps keys to file names, objfile.py owns the
file format and the atomic write. Arguments, return dictionaries and errors follow boto3, so the daemon
cannot tell this client from `boto3.client("s3")` for the calls listed in the design.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody

from nst_daemon.store.errors import (
    client_error,
    error_code,
    no_such_bucket,
    no_such_key,
    not_found,
    response_metadata,
)
from nst_daemon.store.keys import HASHED_MARK, check_bucket, check_key, filename_for, key_from_filename
from nst_daemon.store.listing import PAGE_LIMIT, decode_token, encode_token, list_page
from nst_daemon.store.objfile import (
    CorruptObject,
    StoredObject,
    open_object,
    read_info,
    remove_stale_temp_files,
    write_object,
)

DEFAULT_CONTENT_TYPE = "binary/octet-stream"  # what S3 reports when none was given
_CHUNK = 1024 * 1024
_COPY_TO_ITSELF = (
    "This copy request is illegal because it is trying to copy an object to itself without changing the "
    "object's metadata, storage class, website redirect location or encryption attributes."
)


class LocalS3Client:
    """A filesystem object store that answers like a boto3 S3 client. Safe to share between threads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_stale_temp_files(Path(entry.path))

    def __repr__(self) -> str:
        return f"LocalS3Client({str(self.root)!r})"

    # Buckets

    def create_bucket(
        self, *, Bucket: str, CreateBucketConfiguration: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        operation = "CreateBucket"
        path = self.root / check_bucket(Bucket, operation)
        try:
            path.mkdir()
        except FileExistsError:
            raise client_error(
                operation,
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
                409,
                BucketName=Bucket,
            ) from None
        return {"Location": f"/{Bucket}", "ResponseMetadata": response_metadata()}

    def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self._bucket(Bucket, "HeadBucket", head=True)
        return {"ResponseMetadata": response_metadata()}

    # Objects

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: Any = b"",
        ContentType: str | None = None,
        Metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        operation = "PutObject"
        key = check_key(Key, operation)
        metadata = _check_metadata(Metadata)
        chunks = _body_chunks(Body)
        directory = self._bucket(Bucket, operation)
        stored = write_object(
            directory, filename_for(key), key, ContentType or DEFAULT_CONTENT_TYPE, metadata, chunks
        )
        return {"ETag": stored.etag, "ResponseMetadata": response_metadata()}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        operation = "GetObject"
        key = check_key(Key, operation)
        info, stream = self._open(self._bucket(Bucket, operation), key, no_such_key(operation, key))
        return {"Body": StreamingBody(stream, info.size), **_describe(info)}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        operation = "HeadObject"
        key = check_key(Key, operation)
        info, stream = self._open(self._bucket(Bucket, operation, head=True), key, not_found(operation))
        stream.close()
        return _describe(info)

    def list_objects_v2(
        self,
        *,
        Bucket: str,
        Prefix: str = "",
        Delimiter: str = "",
        MaxKeys: int = PAGE_LIMIT,
        ContinuationToken: str | None = None,
        StartAfter: str = "",
    ) -> dict[str, Any]:
        operation = "ListObjectsV2"
        after_item = None
        if ContinuationToken is not None:
            try:
                after_item = decode_token(ContinuationToken)
            except ValueError:
                raise client_error(
                    operation,
                    "InvalidArgument",
                    "The continuation token provided is incorrect",
                    400,
                    ArgumentName="continuation-token",
                ) from None
        directory = self._bucket(Bucket, operation)
        names = _scan(directory)
        page = list_page(
            sorted(names),
            prefix=Prefix,
            delimiter=Delimiter,
            max_keys=MaxKeys,
            start_after=StartAfter,
            after_item=after_item,
        )
        contents = []
        for key in page.keys:
            try:
                info = read_info(directory / names[key])
            except (FileNotFoundError, CorruptObject):
                continue  # deleted (or damaged) since the scan
            contents.append(
                {
                    "Key": key,
                    "LastModified": info.last_modified,
                    "ETag": info.etag,
                    "Size": info.size,
                    "StorageClass": "STANDARD",
                }
            )
        response: dict[str, Any] = {
            "IsTruncated": page.truncated,
            "Name": Bucket,
            "Prefix": Prefix,
            "MaxKeys": MaxKeys,
            "KeyCount": len(contents) + len(page.common_prefixes),
            "ResponseMetadata": response_metadata(),
        }
        # Like S3, absent rather than empty: callers use response.get("Contents", []).
        if contents:
            response["Contents"] = contents
        if Delimiter:
            response["Delimiter"] = Delimiter
        if page.common_prefixes:
            response["CommonPrefixes"] = [{"Prefix": prefix} for prefix in page.common_prefixes]
        if ContinuationToken is not None:
            response["ContinuationToken"] = ContinuationToken
        if page.truncated and page.last_item is not None:
            response["NextContinuationToken"] = encode_token(page.last_item)
        if StartAfter:
            response["StartAfter"] = StartAfter
        return response

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        operation = "DeleteObject"
        key = check_key(Key, operation)
        _unlink(self._bucket(Bucket, operation), key)
        return {"ResponseMetadata": response_metadata(204)}

    def delete_objects(self, *, Bucket: str, Delete: Mapping[str, Any]) -> dict[str, Any]:
        operation = "DeleteObjects"
        objects = Delete.get("Objects") if isinstance(Delete, Mapping) else None
        if not isinstance(objects, list) or not all(isinstance(entry, Mapping) for entry in objects):
            raise ParamValidationError(report="Delete.Objects must be a list of {'Key': ...} dictionaries")
        if len(objects) > PAGE_LIMIT:
            raise client_error(
                operation,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our published schema",
                400,
            )
        keys = [entry.get("Key") for entry in objects]
        directory = self._bucket(Bucket, operation)
        deleted, errors = [], []
        for key in keys:
            try:
                _unlink(directory, check_key(key, operation))
            except ClientError as exc:
                message = exc.response["Error"]["Message"]
                errors.append({"Key": key, "Code": error_code(exc), "Message": message})
            else:
                deleted.append({"Key": key})
        response: dict[str, Any] = {"ResponseMetadata": response_metadata()}
        if deleted and not Delete.get("Quiet", False):
            response["Deleted"] = deleted
        if errors:
            response["Errors"] = errors
        return response

    def copy_object(
        self,
        *,
        Bucket: str,
        Key: str,
        CopySource: str | Mapping[str, str],
        MetadataDirective: str = "COPY",
        ContentType: str | None = None,
        Metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        operation = "CopyObject"
        source_bucket, source_key = _parse_copy_source(CopySource)
        check_bucket(source_bucket, operation)
        check_key(source_key, operation)
        key = check_key(Key, operation)
        metadata = _check_metadata(Metadata)
        if MetadataDirective not in ("COPY", "REPLACE"):
            raise client_error(operation, "InvalidArgument", "Unknown metadata directive.", 400)
        if (source_bucket, source_key) == (Bucket, key) and MetadataDirective == "COPY":
            raise client_error(operation, "InvalidRequest", _COPY_TO_ITSELF, 400)
        directory = self._bucket(Bucket, operation)
        source_dir = self._bucket(source_bucket, operation)
        info, stream = self._open(source_dir, source_key, no_such_key(operation, source_key))
        if MetadataDirective == "COPY":
            content_type, metadata = info.content_type, info.metadata
        else:
            content_type = ContentType or DEFAULT_CONTENT_TYPE
        with stream:
            chunks = _read_chunks(stream)
            stored = write_object(directory, filename_for(key), key, content_type, metadata, chunks)
        return {
            "CopyObjectResult": {"ETag": stored.etag, "LastModified": stored.last_modified},
            "ResponseMetadata": response_metadata(),
        }

    # Internals

    def _bucket(self, bucket: str, operation: str, *, head: bool = False) -> Path:
        path = self.root / check_bucket(bucket, operation)
        if not path.is_dir():
            raise not_found(operation) if head else no_such_bucket(operation, bucket)
        return path

    def _open(self, directory: Path, key: str, missing: ClientError) -> tuple[StoredObject, BinaryIO]:
        try:
            info, stream = open_object(directory / filename_for(key))
        except FileNotFoundError:
            raise missing from None
        except CorruptObject as exc:
            raise client_error(missing.operation_name, "InternalError", str(exc), 500) from exc
        if info.key != key:  # a hashed-name collision: not this key's object
            stream.close()
            raise missing
        return info, stream


def _describe(info: StoredObject) -> dict[str, Any]:
    return {
        "AcceptRanges": "bytes",
        "LastModified": info.last_modified,
        "ContentLength": info.size,
        "ETag": info.etag,
        "ContentType": info.content_type,
        "Metadata": dict(info.metadata),
        "ResponseMetadata": response_metadata(),
    }


def _scan(directory: Path) -> dict[str, str]:
    """Every stored key in a bucket directory, mapped to its file name."""
    found = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            key = key_from_filename(entry.name)
            if key is None and entry.name.startswith(HASHED_MARK):
                try:
                    key = read_info(Path(entry.path)).key
                except (FileNotFoundError, CorruptObject):
                    continue
                if filename_for(key) != entry.name:
                    continue
            if key is not None:
                found[key] = entry.name
    return found


def _unlink(directory: Path, key: str) -> None:
    # S3 reports success for keys that do not exist.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / filename_for(key))


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ParamValidationError(report=f"Invalid type for parameter Metadata, value: {metadata!r}")
    checked = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ParamValidationError(report=f"Invalid type for parameter Metadata, value: {metadata!r}")
        if not (name + value).isascii():
            # botocore's own wording for the same client-side check.
            raise ParamValidationError(
                report=f'Non ascii characters found in S3 metadata for key "{name}", value: "{value}".  \n'
                "S3 metadata can only contain ASCII characters. "
            )
        # Metadata travels as HTTP headers, so S3 hands the names back lowercased.
        checked[name.lower()] = value
    return checked


def _body_chunks(body: Any) -> Iterable[bytes]:
    if body is None:
        return ()
    if isinstance(body, bytes | bytearray | memoryview):
        return (bytes(body),)
    if isinstance(body, str):
        return (body.encode("utf-8"),)
    if callable(getattr(body, "read", None)):
        return _read_chunks(body)
    raise ParamValidationError(
        report=f"Invalid type for parameter Body, value: {body!r}, type: {type(body)}, "
        "valid types: <class 'bytes'>, <class 'bytearray'>, file-like object"
    )


def _read_chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk


def _parse_copy_source(source: str | Mapping[str, str]) -> tuple[str, str]:
    if isinstance(source, str):
        bucket, _, key = source.lstrip("/").partition("/")
        return bucket, key
    if isinstance(source, Mapping) and "Bucket" in source and "Key" in source:
        return source["Bucket"], source["Key"]
    raise ParamValidationError(report=f"Invalid value for parameter CopySource, value: {source!r}")
