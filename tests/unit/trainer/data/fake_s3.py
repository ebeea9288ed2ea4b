"""A stand-in for minio.Minio, for unit tests of s3:// sources."""

from dataclasses import dataclass


class FakeResponse:
    def __init__(self, content: bytes) -> None:
        self.content = content
        self.closed = self.released = False

    def read(self) -> bytes:
        return self.content

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


class FakeS3Error(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class FakeObjectInfo:
    etag: str | None
    size: int | None


class FakeMinio:
    """Stands in for minio.Minio: get_object and stat_object over a dict of objects."""

    def __init__(self, objects: dict[tuple[str, str], bytes]) -> None:
        self.objects = objects
        self.responses: list[FakeResponse] = []

    def get_object(self, bucket_name: str, object_name: str) -> FakeResponse:
        if (bucket_name, object_name) not in self.objects:
            raise FakeS3Error("NoSuchKey")
        self.responses.append(FakeResponse(self.objects[bucket_name, object_name]))
        return self.responses[-1]

    def stat_object(self, bucket_name: str, object_name: str) -> FakeObjectInfo:
        content = self.objects[bucket_name, object_name]
        return FakeObjectInfo(etag=str(hash(content)), size=len(content))
