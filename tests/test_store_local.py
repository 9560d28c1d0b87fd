"""What only the local client promises: key safety, atomic writes, crash cleanup, retention by age."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody

from nst_daemon.config import Settings
from nst_daemon.errors import DiskFull
from nst_daemon.store import LocalS3Client, expire, get_bytes, open_store, put_bytes
from nst_daemon.store.objfile import TEMP_PREFIX

BUCKET = "nstd"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def client(root: Path) -> LocalS3Client:
    store = LocalS3Client(root)
    store.create_bucket(Bucket=BUCKET)
    return store


def _tree(path: Path) -> list[str]:
    return sorted(str(item.relative_to(path)) for item in path.rglob("*"))


def _temp_files(root: Path) -> list[str]:
    return [name for name in os.listdir(root / BUCKET) if name.startswith(TEMP_PREFIX)]


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# Key and bucket safety

HOSTILE_KEYS = [
    "..",
    "../escaped",
    "a/../../escaped",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "/etc/passwd",
    "/",
    "a\\..\\..\\escaped",
    "..\\escaped",
    "a\x00b",
    ".nstd-tmp-1-x",
    "jobs/.nstd-tmp-1-x",
    ".nstd-anything",
    "\udc80lone-surrogate",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused_without_touching_disk(
    tmp_path: Path, client: LocalS3Client, key: str
) -> None:
    before = _tree(tmp_path)
    calls = [
        lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"pwned"),
        lambda: client.get_object(Bucket=BUCKET, Key=key),
        lambda: client.head_object(Bucket=BUCKET, Key=key),
        lambda: client.delete_object(Bucket=BUCKET, Key=key),
        lambda: client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": "x"}),
        lambda: client.copy_object(Bucket=BUCKET, Key="x", CopySource={"Bucket": BUCKET, "Key": key}),
    ]
    for call in calls:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert _error(excinfo) == ("InvalidKey", 400)
    assert _tree(tmp_path) == before == ["root", f"root/{BUCKET}"]


def test_key_length_limit_is_1024_utf8_bytes(client: LocalS3Client) -> None:
    longest = "é" * 512  # 1024 bytes: allowed, and too long to be a file name as-is
    client.put_object(Bucket=BUCKET, Key=longest, Body=b"long")
    assert get_bytes(client, BUCKET, longest) == b"long"
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == [longest]
    for key in ("é" * 512 + "x", "x" * 1025):
        with pytest.raises(ClientError) as excinfo:
            client.put_object(Bucket=BUCKET, Key=key, Body=b"")
        assert _error(excinfo) == ("KeyTooLongError", 400)


def test_empty_key_is_a_parameter_error(client: LocalS3Client) -> None:
    with pytest.raises(ParamValidationError):
        client.put_object(Bucket=BUCKET, Key="", Body=b"")


@pytest.mark.parametrize(
    "bucket",
    ["..", ".", "../x", "a/b", "/tmp", "AB-upper", "under_score", "192.168.0.1", "ab", "x" * 64,
     "-abc", "abc-", "a..b", "xn--abc", "nstd\x00", "nstd\n"],
)  # fmt: skip
def test_bad_bucket_names(tmp_path: Path, client: LocalS3Client, bucket: str) -> None:
    before = _tree(tmp_path)
    for call in (
        lambda: client.create_bucket(Bucket=bucket),
        lambda: client.put_object(Bucket=bucket, Key="k", Body=b""),
        lambda: client.list_objects_v2(Bucket=bucket),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert _error(excinfo) == ("InvalidBucketName", 400)
    assert _tree(tmp_path) == before


def test_delete_objects_reports_refused_keys(client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "ok", b"")
    response = client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "ok"}, {"Key": "../x"}]})
    assert response["Deleted"] == [{"Key": "ok"}]
    assert [(e["Key"], e["Code"]) for e in response["Errors"]] == [("../x", "InvalidKey")]
    quiet = client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "gone"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet


def test_delete_objects_takes_at_most_1000_keys(client: LocalS3Client) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)]})
    assert _error(excinfo) == ("MalformedXML", 400)


def test_keys_that_are_prefixes_of_each_other(client: LocalS3Client) -> None:
    keys = ["a", "a/", "a/b", "a/b/c", "a//b"]
    for key in keys:
        put_bytes(client, BUCKET, key, key.encode())
    for key in keys:
        assert get_bytes(client, BUCKET, key) == key.encode()
    client.delete_object(Bucket=BUCKET, Key="a/b")
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        "a",
        "a/",
        "a//b",
        "a/b/c",
    ]


def test_case_is_kept_apart_in_file_names(root: Path, client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "Photo.JPG", b"upper")
    put_bytes(client, BUCKET, "photo.jpg", b"lower")
    names = os.listdir(root / BUCKET)
    # Distinct even on a case-insensitive filesystem: upper case is always escaped.
    assert len({name.lower() for name in names}) == 2
    assert get_bytes(client, BUCKET, "Photo.JPG") == b"upper"


def test_foreign_files_in_a_bucket_are_ignored(root: Path, client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "real", b"x")
    (root / BUCKET / "notes.txt").write_text("not an object")
    (root / BUCKET / "README").write_text("not an object")
    (root / BUCKET / ("=" + "0" * 64)).write_bytes(b"junk")
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["real"]
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=BUCKET, Key="notes.txt")
    assert _error(excinfo) == ("InternalError", 500)


def test_bad_continuation_token(client: LocalS3Client) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.list_objects_v2(Bucket=BUCKET, ContinuationToken="not base64!")
    assert _error(excinfo) == ("InvalidArgument", 400)


def test_get_object_body_is_botocore_streaming_body(client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "k", b"abc")
    body = client.get_object(Bucket=BUCKET, Key="k")["Body"]
    assert isinstance(body, StreamingBody)
    assert list(body.iter_chunks(chunk_size=2)) == [b"ab", b"c"]
    body.close()


def test_reader_keeps_the_object_it_opened(client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "k", b"old" * 1000)
    body = client.get_object(Bucket=BUCKET, Key="k")["Body"]
    put_bytes(client, BUCKET, "k", b"new")
    client.delete_object(Bucket=BUCKET, Key="k")
    assert body.read() == b"old" * 1000


# Atomic writes


def test_concurrent_writers_to_one_key(root: Path, client: LocalS3Client) -> None:
    writers, rounds = 8, 6
    bodies = {
        f"w{n}-{r}": bytes([n * rounds + r]) * (200_000 + n) for n in range(writers) for r in range(rounds)
    }
    problems: list[str] = []
    stop = threading.Event()

    def write(n: int) -> None:
        try:
            for r in range(rounds):
                tag = f"w{n}-{r}"
                client.put_object(Bucket=BUCKET, Key="shared", Body=bodies[tag], Metadata={"tag": tag})
        except Exception as exc:
            problems.append(f"writer {n}: {exc!r}")

    def read() -> None:
        reads, deadline = 0, time.monotonic() + 30
        # At least one whole read, even if the writers finish before this thread gets going.
        while (not stop.is_set() or reads == 0) and time.monotonic() < deadline:
            try:
                got = client.get_object(Bucket=BUCKET, Key="shared")
                data = got["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchKey":
                    continue  # not written yet
                problems.append(f"reader: {exc!r}")
                continue
            except Exception as exc:  # e.g. a short body
                problems.append(f"reader: {exc!r}")
                continue
            reads += 1
            if data != bodies[got["Metadata"]["tag"]] or got["ContentLength"] != len(data):
                problems.append(f"reader: mixed object {got['Metadata']['tag']}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers + threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()

    assert problems == []
    final = client.get_object(Bucket=BUCKET, Key="shared")
    assert final["Body"].read() == bodies[final["Metadata"]["tag"]]
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["shared"]
    assert _temp_files(root) == []


def test_failed_rename_leaves_nothing(
    root: Path, client: LocalS3Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    # One typed error for a full disk, still an OSError, with the system's own as its cause.
    with pytest.raises(DiskFull, match=r"^the server is out of disk space; try again later$") as caught:
        client.put_object(Bucket=BUCKET, Key="k", Body=b"x" * 1000)
    assert isinstance(caught.value, OSError) and caught.value.errno == 28
    assert "No space" in str(caught.value.__cause__)
    monkeypatch.undo()
    with pytest.raises(ClientError) as excinfo:
        client.head_object(Bucket=BUCKET, Key="k")
    assert _error(excinfo) == ("404", 404)
    assert _temp_files(root) == []


def test_failing_body_stream_leaves_nothing(root: Path, client: LocalS3Client) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("upload interrupted")
            return b"x" * 1024

    put_bytes(client, BUCKET, "k", b"previous")
    with pytest.raises(ConnectionResetError):
        client.put_object(Bucket=BUCKET, Key="k", Body=Broken())
    assert get_bytes(client, BUCKET, "k") == b"previous"
    assert _temp_files(root) == []


def test_crash_between_write_and_rename(root: Path, client: LocalS3Client) -> None:
    put_bytes(client, BUCKET, "k", b"previous")
    # A real crash: the writing process dies after fsync, before the rename.
    script = textwrap.dedent(
        f"""
        import os
        from nst_daemon.store import LocalS3Client
        client = LocalS3Client({str(root)!r})
        os.replace = lambda *args: os._exit(17)
        client.put_object(Bucket={BUCKET!r}, Key="k", Body=b"half-done" * 1000)
        client.put_object(Bucket={BUCKET!r}, Key="new", Body=b"never")
        """
    )
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 17
    assert len(_temp_files(root)) == 1

    # Readers that were already open never see the unfinished write.
    assert get_bytes(client, BUCKET, "k") == b"previous"
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["k"]

    reopened = LocalS3Client(root)
    assert _temp_files(root) == []
    assert get_bytes(reopened, BUCKET, "k") == b"previous"


def test_temp_files_of_live_writers_survive_open(root: Path, client: LocalS3Client) -> None:
    bucket_dir = root / BUCKET
    mine = bucket_dir / f"{TEMP_PREFIX}{os.getpid()}-abc"
    parent = bucket_dir / f"{TEMP_PREFIX}{os.getppid()}-abc"
    dead = bucket_dir / f"{TEMP_PREFIX}999999999-abc"
    garbled = bucket_dir / f"{TEMP_PREFIX}garbled"
    for path in (mine, parent, dead, garbled):
        path.write_bytes(b"partial")
    abandoned = bucket_dir / f"{TEMP_PREFIX}{os.getppid()}-old"
    abandoned.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(abandoned, (two_days_ago, two_days_ago))

    LocalS3Client(root)
    assert sorted(_temp_files(root)) == sorted([mine.name, parent.name])
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET)


# Retention


def _age(root: Path, key: str, days: float) -> None:
    from nst_daemon.store.keys import filename_for

    then = time.time() - days * 86400
    os.utime(root / BUCKET / filename_for(key), (then, then))


def test_expire_by_age(root: Path, client: LocalS3Client) -> None:
    for key in ("jobs/old", "jobs/older", "jobs/new", "other/old"):
        put_bytes(client, BUCKET, key, b"x")
    _age(root, "jobs/old", 31)
    _age(root, "jobs/older", 400)
    _age(root, "other/old", 400)

    head = client.head_object(Bucket=BUCKET, Key="jobs/old")
    assert datetime.now(UTC) - head["LastModified"] > timedelta(days=30, hours=23)

    assert expire(client, BUCKET, "jobs/", timedelta(days=30)) == 2
    keys = [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["jobs/new", "other/old"]
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert expire(client, BUCKET, "", cutoff) == 1
    assert [e["Key"] for e in client.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["jobs/new"]


def test_expire_refuses_naive_datetimes(client: LocalS3Client) -> None:
    with pytest.raises(ValueError, match="timezone"):
        expire(client, BUCKET, "", datetime.now())


def test_expire_deletes_in_batches(client: LocalS3Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_daemon.store import retention

    assert retention.DELETE_BATCH == 1000  # S3's limit; shrunk below so the test needs few objects
    monkeypatch.setattr(retention, "DELETE_BATCH", 10)
    for i in range(25):
        client.put_object(Bucket=BUCKET, Key=f"t/{i:02d}", Body=b"")
    batches: list[int] = []
    original = client.delete_objects

    def spy(**kwargs: Any) -> dict[str, Any]:
        batches.append(len(kwargs["Delete"]["Objects"]))
        return original(**kwargs)

    monkeypatch.setattr(client, "delete_objects", spy)
    assert expire(client, BUCKET, "t/", datetime.now(UTC) + timedelta(minutes=1)) == 25
    assert batches == [10, 10, 5]
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET)


def test_delete_objects_accepts_a_full_batch(client: LocalS3Client) -> None:
    response = client.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": f"k{i}"} for i in range(1000)]}
    )
    assert len(response["Deleted"]) == 1000


# open_store


def test_open_store_local_never_imports_boto3(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from nst_daemon.config import Settings
        from nst_daemon.store import LocalS3Client, get_bytes, open_store, put_bytes
        store = {{"backend": "local", "bucket": "results"}}
        settings = Settings.model_validate({{"store": store, "paths": {{"state_dir": {str(tmp_path)!r}}}}})
        client = open_store(settings)
        assert isinstance(client, LocalS3Client), client
        put_bytes(client, "results", "k", b"v")
        assert get_bytes(client, "results", "k") == b"v"
        assert "boto3" not in sys.modules, "boto3 was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "objects" / "results").is_dir()


def test_open_store_local_uses_store_root_and_is_idempotent(tmp_path: Path) -> None:
    settings = Settings.model_validate({"store": {"backend": "local", "root": str(tmp_path / "elsewhere")}})
    client = open_store(settings)
    put_bytes(client, "nstd", "k", b"v")
    assert get_bytes(open_store(settings), "nstd", "k") == b"v"
    assert (tmp_path / "elsewhere" / "nstd").is_dir()
