"""One suite, two targets: LocalS3Client and boto3 talking to a moto S3 server on 127.0.0.1.

Every assertion here must hold for both; anything only the local client promises lives in
test_store_local.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from nst_daemon.config import Settings
from nst_daemon.store import LocalS3Client, expire, get_bytes, is_not_found, open_store, put_bytes

# Not us-east-1: there S3 (and moto) answer 200 to re-creating your own bucket instead of
# BucketAlreadyOwnedByYou, a legacy quirk the local client does not copy.
REGION = "eu-west-1"
BUCKET_CONFIG = {"LocationConstraint": REGION}
MANY = 2500


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        # Dummy credentials, and nothing from the developer's own AWS setup.
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module", params=["local", "moto"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "local":
        return LocalS3Client(tmp_path_factory.mktemp("store"))
    import boto3

    endpoint = request.getfixturevalue("moto_endpoint")
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION)


def _new_bucket(client: Any) -> str:
    name = f"nstd-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration=BUCKET_CONFIG)
    return name


@pytest.fixture
def bucket(client: Any) -> str:
    return _new_bucket(client)


@pytest.fixture(scope="module")
def many_keys(client: Any) -> tuple[str, list[str]]:
    """A bucket holding MANY keys, filled once per target and only read by the tests that use it."""
    name = _new_bucket(client)
    keys = [f"jobs/{i:05d}" for i in range(MANY)]
    if isinstance(client, LocalS3Client) or not _fill_moto_backend(name, keys):
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda key: client.put_object(Bucket=name, Key=key, Body=b""), keys))
    return name, keys


def _fill_moto_backend(bucket: str, keys: list[str]) -> bool:
    """Write straight into the in-process moto backend: 2,500 HTTP PUTs would cost ~20 s on 2 cores.

    Only the filling skips HTTP; the listings under test still go through boto3 and the server.
    Returns False when this moto version keeps its state elsewhere, and the caller falls back to PUTs.
    """
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.get_bucket(bucket)
    except Exception:
        return False
    for key in keys:
        backend.put_object(bucket, key, b"")
    return True


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _keys(response: dict[str, Any]) -> list[str]:
    return [entry["Key"] for entry in response.get("Contents", [])]


def _all_keys(client: Any, bucket: str, **kwargs: Any) -> list[str]:
    keys: list[str] = []
    while True:
        page = client.list_objects_v2(Bucket=bucket, **kwargs)
        keys += _keys(page)
        if not page["IsTruncated"]:
            return keys
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        excinfo.value.operation_name,
    )


# Buckets


def test_create_head_and_duplicate_bucket(client: Any) -> None:
    name = f"nstd-{uuid.uuid4().hex[:16]}"
    with pytest.raises(ClientError) as missing:
        client.head_bucket(Bucket=name)
    assert _error(missing) == ("404", 404, "HeadBucket")

    created = client.create_bucket(Bucket=name, CreateBucketConfiguration=BUCKET_CONFIG)
    assert created["Location"].endswith(name) or created["Location"].endswith(f"{name}/")
    assert client.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200

    with pytest.raises(ClientError) as again:
        client.create_bucket(Bucket=name, CreateBucketConfiguration=BUCKET_CONFIG)
    assert _error(again) == ("BucketAlreadyOwnedByYou", 409, "CreateBucket")


def test_invalid_bucket_name(client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.create_bucket(Bucket="ab", CreateBucketConfiguration=BUCKET_CONFIG)
    assert _error(excinfo) == ("InvalidBucketName", 400, "CreateBucket")


# Objects


def test_put_get_head_round_trip(client: Any, bucket: str) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    put = client.put_object(
        Bucket=bucket, Key="results/1.png", Body=data, ContentType="image/png", Metadata={"Style": "monet"}
    )
    assert put["ETag"] == _etag(data)

    got = client.get_object(Bucket=bucket, Key="results/1.png")
    assert got["Body"].read() == data
    head = client.head_object(Bucket=bucket, Key="results/1.png")
    for response in (got, head):
        assert response["ContentLength"] == len(data)
        assert response["ContentType"] == "image/png"
        assert response["ETag"] == _etag(data)
        assert response["Metadata"] == {"style": "monet"}  # names come back lowercased
        modified = response["LastModified"]
        assert modified.tzinfo is not None
        assert abs(modified - datetime.now(UTC)) < timedelta(minutes=1)
    assert "Body" not in head


def test_default_content_type_and_empty_metadata(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="plain", Body=b"x")
    head = client.head_object(Bucket=bucket, Key="plain")
    assert head["ContentType"] == "binary/octet-stream"
    assert head["Metadata"] == {}


@pytest.mark.parametrize("size", [0, 20 * 1024 * 1024], ids=["0B", "20MB"])
def test_binary_bodies(client: Any, bucket: str, size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert client.put_object(Bucket=bucket, Key="blob", Body=io.BytesIO(data))["ETag"] == _etag(data)

    got = client.get_object(Bucket=bucket, Key="blob")
    assert got["ContentLength"] == size
    digest = hashlib.md5()
    received = 0
    for chunk in got["Body"].iter_chunks(chunk_size=1024 * 1024):
        digest.update(chunk)
        received += len(chunk)
    got["Body"].close()
    assert received == size
    assert f'"{digest.hexdigest()}"' == _etag(data) == got["ETag"]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(entry["Key"], entry["Size"], entry["ETag"]) for entry in listed] == [("blob", size, _etag(data))]


def test_body_read_in_parts(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    body = client.get_object(Bucket=bucket, Key="k")["Body"]
    assert body.read(4) == b"0123"
    assert body.read() == b"456789"
    body.close()


def test_str_body_is_utf8(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="text", Body="héllo")
    assert get_bytes(client, bucket, "text") == "héllo".encode()


def test_overwrite_replaces_body_and_metadata(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"first", ContentType="text/plain", Metadata={"v": "1"})
    client.put_object(Bucket=bucket, Key="k", Body=b"second!", Metadata={"w": "2"})
    got = client.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"second!"
    assert (got["ContentType"], got["Metadata"], got["ETag"]) == (
        "binary/octet-stream",
        {"w": "2"},
        _etag(b"second!"),
    )
    assert _keys(client.list_objects_v2(Bucket=bucket)) == ["k"]


UNICODE_KEYS = [
    "ünïcödé/ファイル.png",
    "emoji/🎨 art.jpg",
    "spaces and %41 +plus&amp?=#",
    "a",
    "a/b",
    "a//b",
    "dir/",
    "UPPER/Case",
    "upper/case",
]


def test_unicode_and_odd_keys(client: Any, bucket: str) -> None:
    for index, key in enumerate(UNICODE_KEYS):
        client.put_object(Bucket=bucket, Key=key, Body=f"{index}".encode())
    for index, key in enumerate(UNICODE_KEYS):
        assert get_bytes(client, bucket, key) == f"{index}".encode(), key
    assert _keys(client.list_objects_v2(Bucket=bucket)) == sorted(UNICODE_KEYS, key=lambda k: k.encode())


def test_listing_is_utf8_binary_order(client: Any, bucket: str) -> None:
    keys = ["b", "B", "a", "a-", "a/", "a0", "é", "z", "~", "日本", "🎨", "\u00ff", "\uffff"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    assert _keys(client.list_objects_v2(Bucket=bucket)) == sorted(keys, key=lambda k: k.encode("utf-8"))


def test_empty_listing_has_no_contents(client: Any, bucket: str) -> None:
    response = client.list_objects_v2(Bucket=bucket)
    assert "Contents" not in response
    assert (response["KeyCount"], response["IsTruncated"], response["Name"]) == (0, False, bucket)
    client.put_object(Bucket=bucket, Key="x", Body=b"")
    response = client.list_objects_v2(Bucket=bucket, Prefix="y")
    assert "Contents" not in response
    assert response["Prefix"] == "y"


def test_list_entry_fields(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"abc")
    (entry,) = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert (entry["Key"], entry["Size"], entry["ETag"], entry["StorageClass"]) == (
        "k",
        3,
        _etag(b"abc"),
        "STANDARD",
    )
    assert entry["LastModified"].tzinfo is not None


DELIMITED = ["a/1", "a/2", "a/3", "a-", "a0", "b", "c/x/1", "c/y", "d"]


def _fill(client: Any, bucket: str, keys: list[str]) -> None:
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"data")


def test_prefix_and_delimiter(client: Any, bucket: str) -> None:
    _fill(client, bucket, DELIMITED)
    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert _keys(top) == ["a-", "a0", "b", "d"]
    assert top["CommonPrefixes"] == [{"Prefix": "a/"}, {"Prefix": "c/"}]
    assert (top["KeyCount"], top["Delimiter"]) == (6, "/")

    inside = client.list_objects_v2(Bucket=bucket, Prefix="c/", Delimiter="/")
    assert _keys(inside) == ["c/y"]
    assert inside["CommonPrefixes"] == [{"Prefix": "c/x/"}]

    partial = client.list_objects_v2(Bucket=bucket, Prefix="c", Delimiter="/")
    assert "Contents" not in partial
    assert partial["CommonPrefixes"] == [{"Prefix": "c/"}]

    assert _keys(client.list_objects_v2(Bucket=bucket, Prefix="a/")) == ["a/1", "a/2", "a/3"]


def test_delimiter_pagination_counts_prefixes(client: Any, bucket: str) -> None:
    _fill(client, bucket, DELIMITED)
    items: list[str] = []
    kwargs: dict[str, Any] = {"Delimiter": "/", "MaxKeys": 2}
    pages = 0
    while True:
        page = client.list_objects_v2(Bucket=bucket, **kwargs)
        pages += 1
        assert page["KeyCount"] <= 2
        items += _keys(page) + [entry["Prefix"] for entry in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    assert sorted(items) == ["a-", "a/", "a0", "b", "c/", "d"]
    assert pages == 3


def test_pagination_over_many_keys(client: Any, many_keys: tuple[str, list[str]]) -> None:
    bucket, keys = many_keys
    first = client.list_objects_v2(Bucket=bucket)
    assert (first["KeyCount"], first["MaxKeys"], first["IsTruncated"]) == (1000, 1000, True)
    assert _keys(first) == keys[:1000]

    sizes = []
    seen: list[str] = []
    kwargs: dict[str, Any] = {"MaxKeys": 700}
    while True:
        page = client.list_objects_v2(Bucket=bucket, **kwargs)
        sizes.append(page["KeyCount"])
        seen += _keys(page)
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    assert sizes == [700, 700, 700, 400]
    assert seen == keys


def test_start_after(client: Any, many_keys: tuple[str, list[str]]) -> None:
    bucket, keys = many_keys
    page = client.list_objects_v2(Bucket=bucket, StartAfter=keys[1233], MaxKeys=5)
    assert _keys(page) == keys[1234:1239]
    assert page["StartAfter"] == keys[1233]
    assert _all_keys(client, bucket, StartAfter=keys[-3]) == keys[-2:]
    # StartAfter need not be an existing key.
    assert _all_keys(client, bucket, StartAfter="jobs/02499x") == []
    assert _all_keys(client, bucket, Prefix="jobs/024", StartAfter="jobs/0249") == keys[2490:]
    assert _all_keys(client, bucket, Prefix="jobs/024", StartAfter="a") == keys[2400:]


def test_delete_object(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert client.delete_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=bucket, Key="k")
    assert _error(excinfo) == ("NoSuchKey", 404, "GetObject")
    # Deleting what is not there is not an error in S3.
    assert client.delete_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_delete_objects(client: Any, bucket: str) -> None:
    _fill(client, bucket, ["a", "a/b", "c"])
    response = client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "a/b"}, {"Key": "never-existed"}]}
    )
    assert sorted(entry["Key"] for entry in response["Deleted"]) == ["a", "a/b", "never-existed"]
    assert "Errors" not in response
    assert _keys(client.list_objects_v2(Bucket=bucket)) == ["c"]


def test_copy_object(client: Any, bucket: str) -> None:
    source = "in/ünï 1.png"
    client.put_object(Bucket=bucket, Key=source, Body=b"pixels", ContentType="image/png", Metadata={"a": "1"})

    copied = client.copy_object(Bucket=bucket, Key="out/copy.png", CopySource=f"{bucket}/{source}")
    assert copied["CopyObjectResult"]["ETag"] == _etag(b"pixels")
    assert copied["CopyObjectResult"]["LastModified"].tzinfo is not None
    head = client.head_object(Bucket=bucket, Key="out/copy.png")
    assert (head["ContentType"], head["Metadata"]) == ("image/png", {"a": "1"})
    assert get_bytes(client, bucket, "out/copy.png") == b"pixels"

    other = _new_bucket(client)
    client.copy_object(
        Bucket=other,
        Key="replaced",
        CopySource={"Bucket": bucket, "Key": source},
        MetadataDirective="REPLACE",
        ContentType="image/webp",
        Metadata={"b": "2"},
    )
    head = client.head_object(Bucket=other, Key="replaced")
    assert (head["ContentType"], head["Metadata"], head["ETag"]) == (
        "image/webp",
        {"b": "2"},
        _etag(b"pixels"),
    )
    # The source is untouched.
    assert client.head_object(Bucket=bucket, Key=source)["Metadata"] == {"a": "1"}


def test_copy_object_onto_itself(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"x", ContentType="text/plain")
    with pytest.raises(ClientError) as excinfo:
        client.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert _error(excinfo) == ("InvalidRequest", 400, "CopyObject")
    client.copy_object(
        Bucket=bucket,
        Key="k",
        CopySource={"Bucket": bucket, "Key": "k"},
        MetadataDirective="REPLACE",
        ContentType="text/markdown",
    )
    head = client.head_object(Bucket=bucket, Key="k")
    assert (head["ContentType"], head["ContentLength"]) == ("text/markdown", 1)


def test_copy_object_errors(client: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as missing_key:
        client.copy_object(Bucket=bucket, Key="d", CopySource=f"{bucket}/nope")
    assert _error(missing_key) == ("NoSuchKey", 404, "CopyObject")
    with pytest.raises(ClientError) as missing_bucket:
        client.copy_object(Bucket=bucket, Key="d", CopySource="nstd-no-such-bucket/nope")
    assert _error(missing_bucket) == ("NoSuchBucket", 404, "CopyObject")


def test_missing_key_and_bucket_errors(client: Any, bucket: str) -> None:
    absent = "nstd-no-such-bucket"
    cases = [
        (lambda: client.get_object(Bucket=bucket, Key="nope"), ("NoSuchKey", 404, "GetObject")),
        (lambda: client.head_object(Bucket=bucket, Key="nope"), ("404", 404, "HeadObject")),
        (lambda: client.get_object(Bucket=absent, Key="k"), ("NoSuchBucket", 404, "GetObject")),
        (lambda: client.head_object(Bucket=absent, Key="k"), ("404", 404, "HeadObject")),
        (lambda: client.put_object(Bucket=absent, Key="k", Body=b""), ("NoSuchBucket", 404, "PutObject")),
        (lambda: client.list_objects_v2(Bucket=absent), ("NoSuchBucket", 404, "ListObjectsV2")),
        (lambda: client.delete_object(Bucket=absent, Key="k"), ("NoSuchBucket", 404, "DeleteObject")),
        (
            lambda: client.delete_objects(Bucket=absent, Delete={"Objects": [{"Key": "k"}]}),
            ("NoSuchBucket", 404, "DeleteObjects"),
        ),
    ]
    for call, expected in cases:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert _error(excinfo) == expected
        assert is_not_found(excinfo.value)
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=bucket, Key="nope")
    assert excinfo.value.response["Error"]["Key"] == "nope"
    assert excinfo.value.response["Error"]["Message"] == "The specified key does not exist."


def test_non_ascii_metadata_is_refused_before_sending(client: Any, bucket: str) -> None:
    with pytest.raises(ParamValidationError):
        client.put_object(Bucket=bucket, Key="k", Body=b"", Metadata={"title": "ünïcode"})
    with pytest.raises(ClientError) as excinfo:
        client.head_object(Bucket=bucket, Key="k")
    assert _error(excinfo)[0] == "404"


# Helpers and retention, which must work on both backends through the interface alone


def test_put_bytes_and_get_bytes(client: Any, bucket: str) -> None:
    etag = put_bytes(client, bucket, "r/out.jpg", b"jpeg", "image/jpeg", {"job": "7"})
    assert etag == _etag(b"jpeg")
    assert get_bytes(client, bucket, "r/out.jpg") == b"jpeg"
    head = client.head_object(Bucket=bucket, Key="r/out.jpg")
    assert (head["ContentType"], head["Metadata"]) == ("image/jpeg", {"job": "7"})


def test_expire_deletes_only_under_prefix(client: Any, bucket: str) -> None:
    _fill(client, bucket, ["tmp/1", "tmp/2", "tmp/sub/3", "tmpx", "keep/1"])
    assert expire(client, bucket, "tmp/", timedelta(days=1)) == 0
    assert expire(client, bucket, "tmp/", datetime.now(UTC) + timedelta(minutes=5)) == 3
    assert _keys(client.list_objects_v2(Bucket=bucket)) == ["keep/1", "tmpx"]


# open_store against a real S3 API


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1"])
def test_open_store_s3_creates_bucket(moto_endpoint: str, tmp_path: Any, region: str) -> None:
    name = f"nstd-{uuid.uuid4().hex[:16]}"
    settings = Settings.model_validate(
        {
            "store": {"backend": "s3", "bucket": name, "endpoint_url": moto_endpoint, "region": region},
            "paths": {"state_dir": str(tmp_path)},
        }
    )
    store = open_store(settings)
    assert not isinstance(store, LocalS3Client)
    assert store.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    put_bytes(store, name, "k", b"v")
    # Opening again finds the bucket and keeps its contents.
    assert get_bytes(open_store(settings), name, "k") == b"v"
    assert not (tmp_path / "objects").exists()
