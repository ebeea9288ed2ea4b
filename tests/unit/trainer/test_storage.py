"""Object stores: the local folder for real, S3Store against an in-memory fake MinIO client."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from minio.error import S3Error

from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.storage import LocalStore, S3Store, StorageError, open_store

SECRET = "s3cr3t-do-not-print"
ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "tradewind",
    "AWS_SECRET_ACCESS_KEY": SECRET,
}


# --- LocalStore ----------------------------------------------------------------------------


def test_local_round_trip_listing_and_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "run")
    for key in ("b/2.pt", "a.json", "b/1.pt", "b/c/3.pt", "bz.txt"):
        store.put(key, key.encode())
    assert store.get("b/c/3.pt") == b"b/c/3.pt"
    assert store.list("") == ["a.json", "b/1.pt", "b/2.pt", "b/c/3.pt", "bz.txt"]
    assert store.list("b") == ["b/1.pt", "b/2.pt", "b/c/3.pt", "bz.txt"]
    assert store.list("b/") == ["b/1.pt", "b/2.pt", "b/c/3.pt"]
    assert store.list("b/c/") == ["b/c/3.pt"]
    assert store.list("nothing/") == []
    assert store.exists("b/1.pt")
    assert not store.exists("b")  # a folder is not an object
    store.delete("b/c/3.pt")
    store.delete("b/c/3.pt")  # deleting a missing key is fine
    assert not (tmp_path / "run" / "b" / "c").exists()  # emptied folders go too
    assert store.list("b/") == ["b/1.pt", "b/2.pt"]


def test_local_put_replaces_and_get_missing_names_the_uri(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("x.bin", b"old")
    store.put("x.bin", b"new")
    assert store.get("x.bin") == b"new"
    with pytest.raises(FileNotFoundError, match=r"file:///.*/missing\.bin"):
        store.get("missing.bin")


def test_local_failed_write_keeps_the_old_object_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put("ckpt/state.pt", b"complete old checkpoint")

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.put("ckpt/state.pt", b"new bytes that never land")
    monkeypatch.undo()
    assert store.get("ckpt/state.pt") == b"complete old checkpoint"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.pt"]


def test_local_temp_files_of_unfinished_writes_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/state.pt", b"x")
    (tmp_path / "a" / ".tmp-abc123").write_bytes(b"half")
    assert store.list("") == ["a/state.pt"]


def test_local_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    versions = [bytes([v]) * 4_000_000 for v in range(4)]
    store.put("state.pt", versions[0])
    torn: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = store.get("state.pt")
            if data not in versions:
                torn.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            store.put("state.pt", versions[i % 4])
    finally:
        done.set()
        reader.join()
    assert torn == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/"])
def test_invalid_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        LocalStore(tmp_path).put(key, b"x")


def test_local_uri_round_trips_through_open_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "with space")
    store.put("step/state.pt", b"abc")
    uri = store.uri("")
    assert uri.startswith("file:///") and "%20" in uri
    again = open_store(uri)
    assert isinstance(again, LocalStore)
    assert again.get("step/state.pt") == b"abc"
    assert again.uri("step/state.pt") == store.uri("step/state.pt")


# --- open_store ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("file://relative/path", "absolute path"),
        ("gs://bucket/x", "s3://bucket/prefix or file:///path"),
        ("s3:///no-bucket", "needs a bucket"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
    ],
)
def test_open_store_rejects_bad_uris(uri: str, problem: str) -> None:
    with pytest.raises(StorageError, match=problem):
        open_store(uri, ENV)


def test_open_store_s3_needs_an_endpoint() -> None:
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL or TRADEWIND_S3_ENDPOINT"):
        open_store("s3://tradewind/run", {"AWS_ACCESS_KEY_ID": "a"})


def test_open_store_s3_builds_a_minio_client_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import minio

    built: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(minio, "Minio", lambda endpoint, **kw: built.append((endpoint, kw)))
    store = open_store("s3://tradewind/runs/a/", ENV)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("tradewind", "runs/a/")
    assert store.uri("latest.json") == "s3://tradewind/runs/a/latest.json"
    endpoint, kw = built[0]
    assert endpoint == "127.0.0.1:9"
    assert (kw["access_key"], kw["secret_key"], kw["secure"]) == ("tradewind", SECRET, False)

    env = {"TRADEWIND_S3_ENDPOINT": "https://s3.example.com", "AWS_REGION": "eu-west-1"}
    open_store("s3://tradewind", env)
    assert built[1][0] == "s3.example.com"
    assert (built[1][1]["secure"], built[1][1]["region"]) == (True, "eu-west-1")


# --- S3Store against a fake client ---------------------------------------------------------


@dataclass
class FakeObject:
    object_name: str


class FakeResponse(io.BytesIO):
    def release_conn(self) -> None:
        pass


class FakeMinio:
    """The slice of minio.Minio that S3Store calls, over a dict; `fail` raises S3Errors."""

    def __init__(self, buckets: tuple[str, ...] = ("tradewind",)) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.buckets = set(buckets)
        self.fail: Exception | None = None

    def _check(self, bucket: str, name: str | None = None) -> None:
        if self.fail is not None:
            raise self.fail
        if bucket not in self.buckets:
            raise _s3_error("NoSuchBucket", "The specified bucket does not exist", bucket)
        if name is not None and (bucket, name) not in self.objects:
            raise _s3_error("NoSuchKey", "The specified key does not exist.", bucket, name)

    def put_object(self, bucket_name: str, object_name: str, data: Any, length: int) -> None:
        self._check(bucket_name)
        self.objects[bucket_name, object_name] = data.read(length)

    def get_object(self, bucket_name: str, object_name: str) -> FakeResponse:
        self._check(bucket_name, object_name)
        return FakeResponse(self.objects[bucket_name, object_name])

    def stat_object(self, bucket_name: str, object_name: str) -> object:
        self._check(bucket_name, object_name)
        return object()

    def list_objects(
        self, bucket_name: str, prefix: str | None = None, recursive: bool = False
    ) -> Iterator[FakeObject]:
        assert recursive
        self._check(bucket_name)
        for bucket, name in sorted(self.objects, reverse=True):  # S3Store must sort
            if bucket == bucket_name and name.startswith(prefix or ""):
                yield FakeObject(name)

    def remove_object(self, bucket_name: str, object_name: str) -> None:
        self._check(bucket_name)
        self.objects.pop((bucket_name, object_name), None)


def _s3_error(code: str, message: str, bucket: str, name: str | None = None) -> S3Error:
    return S3Error(None, code, message, f"/{bucket}/{name}", "rid", "hid", bucket, name)  # type: ignore[arg-type]


def test_s3_round_trip_under_a_prefix() -> None:
    client = FakeMinio()
    client.objects["tradewind", "other/x"] = b"not ours"
    store = S3Store("tradewind", "/runs/a/", client)
    store.put("step-1/state.pt", b"state")
    store.put("latest.json", b"{}")
    assert client.objects["tradewind", "runs/a/step-1/state.pt"] == b"state"
    assert store.get("step-1/state.pt") == b"state"
    assert store.list("") == ["latest.json", "step-1/state.pt"]
    assert store.list("step-") == ["step-1/state.pt"]
    assert store.exists("latest.json") and not store.exists("best.json")
    store.delete("latest.json")
    assert store.list("") == ["step-1/state.pt"]
    assert store.uri("step-1") == "s3://tradewind/runs/a/step-1"
    assert S3Store("tradewind", "", client).uri("x") == "s3://tradewind/x"


def test_s3_missing_object_is_file_not_found() -> None:
    store = S3Store("tradewind", "run", FakeMinio())
    with pytest.raises(FileNotFoundError, match=r"s3://tradewind/run/latest\.json"):
        store.get("latest.json")


def test_s3_missing_bucket_names_the_uri() -> None:
    store = S3Store("nope", "run", FakeMinio())
    with pytest.raises(StorageError, match=r"s3://nope/run/state.pt: bucket 'nope' does not exist"):
        store.put("state.pt", b"x")
    with pytest.raises(StorageError, match="does not exist"):
        store.list("")


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"])
def test_s3_rejected_credentials_are_explained_without_the_secret(code: str) -> None:
    client = FakeMinio()
    client.fail = _s3_error(code, f"bad signature for secret {SECRET}", "tradewind", "k")
    store = S3Store("tradewind", "run", client, environ=ENV)
    with pytest.raises(StorageError) as caught:
        store.get("latest.json")
    message = str(caught.value)
    assert "s3://tradewind/run/latest.json: credentials rejected" in message
    assert code in message and "AWS_SECRET_ACCESS_KEY" in message
    assert SECRET not in message


def test_s3_other_errors_keep_the_message_but_redact_the_secret() -> None:
    client = FakeMinio()
    client.fail = _s3_error("InternalError", f"boom {SECRET} boom", "tradewind", "k")
    store = S3Store("tradewind", "run", client, environ=ENV)
    with pytest.raises(StorageError, match=r"S3 error InternalError: boom \*\*\* boom") as caught:
        store.put("k", b"x")
    assert SECRET not in str(caught.value)


def test_s3_unreachable_endpoint_is_a_storage_error() -> None:
    from urllib3.exceptions import MaxRetryError

    client = FakeMinio()
    client.fail = MaxRetryError(None, "/tradewind/run/k", "Connection refused")  # type: ignore[arg-type]
    store = S3Store("tradewind", "run", client)
    with pytest.raises(StorageError, match="s3://tradewind/run/k: cannot reach the object store"):
        store.get("k")


def test_s3_programming_errors_are_not_disguised() -> None:
    client = FakeMinio()
    client.fail = TypeError("a bug")
    with pytest.raises(TypeError, match="a bug"):
        S3Store("tradewind", "run", client).get("k")


def test_checkpointer_works_over_s3_store() -> None:
    client = FakeMinio()
    checkpointer = Checkpointer(S3Store("tradewind", "run", client), keep_last=1)
    for step, metric in [(1, 0.2), (2, 0.5), (3, 0.4)]:
        checkpointer.save(step, {"step": step}, metric=metric)
    assert sorted(name for _, name in client.objects) == [
        "run/best.json",
        "run/latest.json",
        "run/step-0000000001/meta.json",
        "run/step-0000000001/state.pt",
        "run/step-0000000003/meta.json",
        "run/step-0000000003/state.pt",
    ]
    assert checkpointer.load_latest() == {"step": 3}
    assert checkpointer.best_uri == "s3://tradewind/run/step-0000000001"


def test_local_stores_work_without_the_minio_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "minio", None)  # `import minio` now raises ImportError
    store = open_store(tmp_path.as_uri())
    store.put("a", b"x")
    assert store.get("a") == b"x"
    with pytest.raises(ImportError):
        open_store("s3://tradewind/run", ENV)
