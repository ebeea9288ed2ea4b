"""Object stores for checkpoints: a local folder (`file:///path`) or S3/MinIO (`s3://bucket/prefix`).

Keys are relative, `/`-separated names (`step-0000000001/state.pt`). Both stores make a
`put` all-or-nothing: a reader sees the old object or the new one, never half of one
(`LocalStore` writes a temporary file and renames it; an S3 PUT is atomic by design).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from minio import Minio

_TMP_PREFIX = ".tmp-"
_BUCKET = re.compile(r"^[a-z0-9][-a-z0-9.]{1,61}[a-z0-9]$")
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)


class StorageError(RuntimeError):
    """The object store cannot be used as configured (no such bucket, credentials rejected,
    endpoint unreachable, malformed URI). The message names the URI, never a secret."""


class ObjectStore(Protocol):
    """A flat key -> bytes store rooted at one URI; what the checkpointer needs."""

    def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, atomically replacing any previous object."""

    def get(self, key: str) -> bytes:
        """The bytes at `key`; raises FileNotFoundError when there is no such object."""

    def list(self, prefix: str) -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, as in S3)."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    def uri(self, key: str) -> str:
        """The full `file://` or `s3://bucket/...` URI of `key` ("" for the store's root)."""


def check_key(key: str) -> str:
    """Return `key` if it is a relative `/`-separated name without `.`/`..` or empty parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: use a relative name like 'a/b.pt'")
    return key


# --- local folder --------------------------------------------------------------------------


class LocalStore:
    """Objects as files under `root`; writes go to a temporary file renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes) -> None:
        """Write `data` to a temporary file beside the target, fsync it, rename it over."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        """The file's bytes; FileNotFoundError names the missing URI."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"no object at {self.uri(key)}") from None

    def list(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix`, leaving out temporary files of unfinished writes."""
        folders = prefix.split("/")[:-1]
        if any(p in ("", ".", "..") for p in folders):
            raise ValueError(f"invalid key prefix {prefix!r}")
        top = self.root.joinpath(*folders)
        if not top.is_dir():
            return []
        keys = (
            path.relative_to(self.root).as_posix()
            for path in top.rglob("*")
            if path.is_file() and not path.name.startswith(_TMP_PREFIX)
        )
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        """Remove the file and any folders the removal leaves empty (up to `root`)."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                break

    def exists(self, key: str) -> bool:
        """Whether a file is stored at `key`."""
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        """`file:///abs/path/key` (percent-encoded, as `Path.as_uri` writes it)."""
        return (self._path(key) if key else self.root).as_uri()


def _fsync_dir(folder: Path) -> None:
    """Persist a rename on POSIX file systems; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- S3 / MinIO ----------------------------------------------------------------------------


class S3Response(Protocol):
    """The part of urllib3's response that `get_object` returns."""

    def read(self) -> bytes: ...

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


class S3Object(Protocol):
    """An entry of `list_objects`."""

    @property
    def object_name(self) -> str | None: ...


class S3Client(Protocol):
    """What S3Store needs from a `minio.Minio` client (unit tests pass a fake)."""

    def put_object(
        self, bucket_name: str, object_name: str, data: io.BytesIO, length: int
    ) -> object: ...

    def get_object(self, bucket_name: str, object_name: str) -> S3Response: ...

    def stat_object(self, bucket_name: str, object_name: str) -> object: ...

    def list_objects(
        self, bucket_name: str, prefix: str | None = None, recursive: bool = False
    ) -> Iterable[S3Object]: ...

    def remove_object(self, bucket_name: str, object_name: str) -> None: ...


class S3Store:
    """Objects under `s3://bucket/prefix/` through the MinIO SDK.

    Without `client`, one is built from the environment (see `s3_client_from_env`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: S3Client | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not _BUCKET.match(bucket):
            raise StorageError(f"s3://{bucket}/: {bucket!r} is not a valid bucket name")
        env = os.environ if environ is None else environ
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = _endpoint(env) if client is None else None
        self._secret = env.get("AWS_SECRET_ACCESS_KEY") or ""
        self.client: S3Client = s3_client_from_env(env, self.uri("")) if client is None else client

    def put(self, key: str, data: bytes) -> None:
        """Upload `data` (one PUT, or a multipart upload that appears only when complete)."""
        with self._errors(key):
            self.client.put_object(self.bucket, self._name(key), io.BytesIO(data), len(data))

    def get(self, key: str) -> bytes:
        """Download the object; FileNotFoundError when it does not exist."""
        with self._errors(key):
            response = self.client.get_object(self.bucket, self._name(key))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str) -> list[str]:
        """Sorted keys (relative to the store's prefix) that start with `prefix`."""
        with self._errors(prefix):
            objects = list(
                self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True)
            )
        names = (o.object_name for o in objects if o.object_name)
        return sorted(n.removeprefix(self.prefix) for n in names if not n.endswith("/"))

    def delete(self, key: str) -> None:
        """Remove the object (S3 treats a missing one as removed)."""
        with self._errors(key):
            self.client.remove_object(self.bucket, self._name(key))

    def exists(self, key: str) -> bool:
        """Whether the object exists (a HEAD request)."""
        try:
            with self._errors(key):
                self.client.stat_object(self.bucket, self._name(key))
        except FileNotFoundError:
            return False
        return True

    def uri(self, key: str) -> str:
        """`s3://bucket/prefix/key`."""
        return f"s3://{self.bucket}/{self.prefix}{check_key(key) if key else ''}"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn the SDK's errors into FileNotFoundError / StorageError naming the URI."""
        try:
            yield
        except Exception as err:
            mapped = _translate(err, self.uri(key), self.bucket, self.endpoint)
            if mapped is None:
                raise
            raise _redacted(mapped, self._secret) from err


def _translate(
    err: Exception, uri: str, bucket: str, endpoint: str | None
) -> OSError | StorageError | None:
    """The error to raise instead of `err`, or None to let `err` through unchanged."""
    from urllib3.exceptions import HTTPError

    where = f" at {endpoint}" if endpoint else ""
    code = getattr(err, "code", None)
    if code == "NoSuchKey":
        return FileNotFoundError(f"no object at {uri}")
    if code == "NoSuchBucket":
        return StorageError(f"{uri}: bucket {bucket!r} does not exist{where}")
    if code in _CREDENTIAL_CODES:
        return StorageError(
            f"{uri}: credentials rejected{where} ({code}); check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(code, str):
        return StorageError(f"{uri}: S3 error {code}{where}: {getattr(err, 'message', '')}")
    if isinstance(err, HTTPError | ConnectionError | TimeoutError):
        return StorageError(f"{uri}: cannot reach the object store{where}: {type(err).__name__}")
    if type(err).__module__.startswith("minio"):
        return StorageError(f"{uri}: object store error{where}: {err}")
    return None


def _redacted(err: OSError | StorageError, secret: str) -> OSError | StorageError:
    if secret and secret in str(err):
        return type(err)(str(err).replace(secret, "***"))
    return err


def _endpoint(env: Mapping[str, str]) -> str:
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("TRADEWIND_S3_ENDPOINT")
    if not endpoint:
        raise StorageError(
            "s3:// storage needs AWS_ENDPOINT_URL or TRADEWIND_S3_ENDPOINT "
            "(e.g. http://127.0.0.1:9000)"
        )
    return endpoint if "://" in endpoint else f"https://{endpoint}"


S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 120.0


def s3_client_from_env(env: Mapping[str, str], uri: str = "s3://") -> Minio:
    """A `minio.Minio` client for `AWS_ENDPOINT_URL` (or `TRADEWIND_S3_ENDPOINT`), with
    `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN` and
    `AWS_REGION`; TLS when the endpoint is `https://` (or has no scheme). Every request
    times out (`S3_CONNECT_TIMEOUT_S`, and `S3_READ_TIMEOUT_S` per socket read, not per
    object) and is retried a few times on 5xx, so a store that stops answering fails the
    attempt instead of hanging it."""
    import urllib3
    from minio import Minio

    url = urlsplit(_endpoint(env))
    if url.scheme not in ("http", "https") or not url.netloc:
        raise StorageError(f"{uri}: endpoint {url.geturl()!r} is not http(s)://host[:port]")
    return Minio(
        url.netloc,
        access_key=env.get("AWS_ACCESS_KEY_ID"),
        secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
        session_token=env.get("AWS_SESSION_TOKEN"),
        secure=url.scheme == "https",
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=S3_CONNECT_TIMEOUT_S, read=S3_READ_TIMEOUT_S),
            retries=urllib3.Retry(
                total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        ),
    )


def open_store(uri: str, environ: Mapping[str, str] | None = None) -> ObjectStore:
    """The store rooted at `file:///abs/path` or `s3://bucket[/prefix]`."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StorageError(f"{uri}: a file URI needs an absolute path, file:///abs/path")
        return LocalStore(Path(path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket, s3://bucket/prefix")
        return S3Store(parts.netloc, unquote(parts.path), environ=environ)
    raise StorageError(f"{uri}: storage must be an s3://bucket/prefix or file:///path URI")
