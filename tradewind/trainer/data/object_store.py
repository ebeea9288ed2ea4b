"""Reading `s3://bucket/key` objects with the MinIO SDK, for CSV and Parquet sources."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from tradewind.trainer.data.errors import DataError

if TYPE_CHECKING:
    from minio import Minio

# S3 error codes that no retry can fix; anything else (throttling, a dropped connection)
# propagates unchanged so the caller can retry it.
_PERMANENT_S3_CODES = frozenset(
    {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


class ObjectResponse(Protocol):
    """The part of urllib3's response that `get_object` returns and we use."""

    def read(self) -> bytes: ...

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


class ObjectInfo(Protocol):
    """The part of `stat_object`'s result that identifies a version of an object."""

    @property
    def etag(self) -> str | None: ...

    @property
    def size(self) -> int | None: ...


class ObjectStoreClient(Protocol):
    """What the data pipeline needs from a `minio.Minio` client (tests pass a fake)."""

    def get_object(self, bucket_name: str, object_name: str) -> ObjectResponse: ...

    def stat_object(self, bucket_name: str, object_name: str) -> ObjectInfo: ...


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into bucket and key."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise DataError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, key


def minio_client_from_env(environ: Mapping[str, str] | None = None) -> Minio:
    """A MinIO client for the endpoint and credentials in the environment.

    The endpoint is `AWS_ENDPOINT_URL` or `TRADEWIND_S3_ENDPOINT` (`http://host:port` for a
    plain-HTTP MinIO; without a scheme, HTTPS); credentials are `AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN` and `AWS_REGION`."""
    from tradewind.trainer.storage import StorageError, s3_client_from_env

    try:
        client = s3_client_from_env(os.environ if environ is None else environ)
    except StorageError as exc:
        raise DataError(str(exc).replace("s3:// storage", "s3:// sources")) from None
    return client


def read_object(uri: str, client: ObjectStoreClient) -> bytes:
    """The bytes of the object at `uri`; a missing object or bucket is a DataError."""
    bucket, key = parse_s3_uri(uri)
    with _permanent_s3_errors_as_data_errors(uri):
        response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def object_version(uri: str, client: ObjectStoreClient) -> dict[str, str | int | None]:
    """ETag and size of the object at `uri`, so a cache can tell when it changed."""
    bucket, key = parse_s3_uri(uri)
    with _permanent_s3_errors_as_data_errors(uri):
        info = client.stat_object(bucket, key)
    return {"etag": info.etag, "size": info.size}


@contextmanager
def _permanent_s3_errors_as_data_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        # minio's S3Error carries the S3 error code; fakes in tests may do the same.
        code = getattr(err, "code", None)
        if code in _PERMANENT_S3_CODES:
            raise DataError(f"cannot read {uri}: {code}") from err
        raise
