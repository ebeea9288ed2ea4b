"""An object store that accepts connections and never answers fails the call with a clear
error naming the URI, instead of hanging the attempt."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tradewind.trainer import storage
from tradewind.trainer.storage import StorageError, open_store


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP endpoint that accepts and then never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_store_that_never_answers_fails_the_call(
    black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "S3_READ_TIMEOUT_S", 0.2)
    env = {
        "AWS_ENDPOINT_URL": black_hole,
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "secret-key",
    }
    store = open_store("s3://bucket/run", environ=env)
    with pytest.raises(StorageError, match=r"s3://bucket/run/state\.pt: cannot reach the object"):
        store.get("state.pt")
