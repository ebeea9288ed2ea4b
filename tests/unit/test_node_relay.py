"""The real node's relay and image names: one relay process carries several servers' ports,
pods get MinIO and MLflow at the bridge's address, and a short docker reference is named as
containerd and the kubelet name it."""

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tradewind.devstack import node_relay
from tradewind.devstack.node_images import _normalized
from tradewind.devstack.processes import free_port


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(str(self.server.server_address[1]).encode())  # type: ignore[index]


@pytest.fixture
def servers() -> Iterator[list[int]]:
    """Two servers on 127.0.0.1 that answer with their own port."""
    started = [socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), _Answer) for _ in "ab"]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [server.server_address[1] for server in started]
    for server in started:
        server.shutdown()
        server.server_close()


def _ask(host: str, port: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                return conn.recv(64).decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_one_relay_process_carries_every_port_it_is_given(servers: list[int]) -> None:
    argv = [sys.executable, "-m", "tradewind.devstack.tcp_relay", "--listen=127.0.0.2"]
    relay = subprocess.Popen([*argv, *(f"--port={p}" for p in servers)])
    try:
        assert [_ask("127.0.0.2", port) for port in servers] == [str(p) for p in servers]
    finally:
        relay.terminate()
        relay.wait(timeout=10)


def _stack(with_mlflow: bool) -> Any:
    ports = {"kube-apiserver": 6443, "minio": 9000, "mlflow": 5000}
    return SimpleNamespace(
        state={"ports": ports}, config=SimpleNamespace(with_mlflow=with_mlflow), dir=Path("/x")
    )


def test_pods_get_minio_and_mlflow_at_the_bridge_address() -> None:
    plan: Any = SimpleNamespace(gateway_ip="10.208.3.1")
    assert node_relay.pod_endpoints(_stack(True), plan) == {
        "TRADEWIND_S3_ENDPOINT": "http://10.208.3.1:9000",
        "TRADEWIND_MLFLOW_TRACKING_URI": "http://10.208.3.1:5000",
    }
    assert node_relay.pod_endpoints(_stack(False), plan) == {
        "TRADEWIND_S3_ENDPOINT": "http://10.208.3.1:9000"
    }
    argv = node_relay.process(_stack(False), plan).argv
    assert [a for a in argv if a.startswith("--port=")] == ["--port=6443", "--port=9000"]


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("tradewind-trainer:0.1.0", "docker.io/library/tradewind-trainer:0.1.0"),
        ("debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"),
        ("minio/minio", "docker.io/minio/minio:latest"),
        ("127.0.0.1:5000/ml/tradewind-trainer:0.1.0", "127.0.0.1:5000/ml/tradewind-trainer:0.1.0"),
        ("registry.example.com/ml/x:1", "registry.example.com/ml/x:1"),
        ("localhost/x", "localhost/x:latest"),
    ],
)
def test_a_short_docker_reference_is_named_as_containerd_names_it(ref: str, name: str) -> None:
    assert _normalized(ref) == name
