"""MLflow black-holed (it accepts connections and never answers) for 60 s under 200 running
runs: the operator's reconciles of other runs go on (new runs start, a lost Job is replaced),
statuses keep the progress last read, the operator stops calling MLflow (circuit breaker),
and once MLflow answers again the statuses catch up.

The operator reads MLflow through a TCP proxy in this process that either forwards to the
stack's real MLflow or holds every connection unanswered. Prints what it measured."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL

pytestmark = pytest.mark.integration
RUNS = 200
TRACKED = 10  # runs with an MLflow run, whose progress is followed
BLACK_HOLE_SECONDS = 60.0
POLL_SECONDS = 5


class MLflowSwitch:
    """A TCP proxy to `upstream` that can turn into a black hole: connections accepted and
    held, never answered, never closed (until it forwards again)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.black_hole = False
        self.held: list[socket.socket] = []
        self.forwarded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.black_hole:
                self.held.append(conn)
            else:
                self.forwarded += 1
                threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            conn.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join(timeout=60)
        conn.close()
        upstream.close()

    def forward(self) -> None:
        self.black_hole = False
        for conn in self.held:
            conn.close()

    def close(self) -> None:
        self.server.close()
        self.forward()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def switch(stack: DevStack) -> Iterator[MLflowSwitch]:
    real = urllib.parse.urlsplit(stack.env()["MLFLOW_TRACKING_URI"])
    proxy = MLflowSwitch((real.hostname or "127.0.0.1", real.port or 80))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def blackhole_operator(
    stack: DevStack,
    crds_installed: None,
    switch: MLflowSwitch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        stack,
        tmp_path_factory.mktemp("operator"),
        TRADEWIND_MLFLOW_TRACKING_URI=switch.uri,
        TRADEWIND_STATUS_POLL_SECONDS=str(POLL_SECONDS),
    )
    op.start()
    yield op
    op.stop()


def _run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"training": {"epochs": 10}, "podTemplate": {"labels": {HOLD_LABEL: "true"}}},
    }


def _percent(kubectl: Kubectl, ns: str) -> dict[str, int]:
    runs = kubectl.get("trainingruns", "-n", ns)["items"]
    return {
        r["metadata"]["name"]: int(
            ((r.get("status") or {}).get("progress") or {}).get("percent", 0)
        )
        for r in runs
    }


def _wait_percent(
    kubectl: Kubectl, ns: str, names: list[str], percent: int, timeout: float
) -> float:
    """Seconds until every run in `names` shows `percent` (polled: one list per second)."""
    start = time.monotonic()
    while True:
        shown = _percent(kubectl, ns)
        if all(shown.get(n) == percent for n in names):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, {n: shown.get(n) for n in names}
        time.sleep(1)


def _job_uid(kubectl: Kubectl, ns: str, name: str) -> str | None:
    found = kubectl.run("get", f"job/{name}", "-n", ns, "-o", "json", check=False)
    return str(json.loads(found.stdout)["metadata"]["uid"]) if found.returncode == 0 else None


def _log_epoch(client: Any, run_ids: list[str], epoch: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for run_id in run_ids:
        metrics = [Metric("epoch", epoch, now, epoch), Metric("val_loss", 1 / epoch, now, epoch)]
        client.log_batch(run_id, metrics=metrics)


def test_a_black_holed_mlflow_stops_no_reconcile_and_status_catches_up(
    kubectl: Kubectl,
    stack: DevStack,
    switch: MLflowSwitch,
    blackhole_operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    ns = namespace
    started = time.monotonic()
    manifests = {"apiVersion": "v1", "kind": "List",
                 "items": [_run(f"run-{i:03d}") for i in range(RUNS)]}  # fmt: skip
    kubectl.run("create", "-n", ns, "-f", "-", stdin=json.dumps(manifests))
    kubectl.wait("--for=condition=Running", "trainingrun", "--all", "-n", ns, timeout=300)
    all_running = time.monotonic() - started

    # Progress in MLflow for some of them, read through the switch while it forwards.
    client = MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tradewind")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("tradewind")
    )
    tracked = [f"run-{i:03d}" for i in range(TRACKED)]
    run_ids = []
    for name in tracked:
        uid = kubectl.get(f"trainingrun/{name}", "-n", ns)["metadata"]["uid"]
        tags = {"tradewind.name": name, "tradewind.namespace": ns, "tradewind.uid": uid}
        run_ids.append(client.create_run(experiment_id, tags=tags).info.run_id)
    _log_epoch(client, run_ids, 2)
    first_progress = _wait_percent(kubectl, ns, tracked, 20, timeout=120)

    # Black hole: MLflow accepts and never answers; training goes on meanwhile.
    switch.black_hole = True
    hole_start = time.monotonic()
    _log_epoch(client, run_ids, 5)

    def left() -> int:
        return max(1, int(BLACK_HOLE_SECONDS - (time.monotonic() - hole_start)))

    # Reconciles of other runs go on, within the black hole: new runs start ...
    fresh = [f"late-{i}" for i in range(5)]
    for name in fresh:
        kubectl.apply(_run(name), "-n", ns)
    t = time.monotonic()
    for name in fresh:
        kubectl.wait("--for=condition=Running", f"trainingrun/{name}", "-n", ns, timeout=left())
    fresh_running = time.monotonic() - t
    # ... and a run whose Job is lost gets it back.
    lost = kubectl.get("job/run-150-0", "-n", ns)["metadata"]["uid"]
    kubectl.run("delete", "job", "run-150-0", "-n", ns, "--wait=false")
    t = time.monotonic()
    while _job_uid(kubectl, ns, "run-150-0") in (None, lost):
        assert time.monotonic() - hole_start < BLACK_HOLE_SECONDS, "the Job was not replaced"
        time.sleep(0.5)
    kubectl.wait("--for=condition=Running", "trainingrun/run-150", "-n", ns, timeout=left())
    restarted = time.monotonic() - t
    assert time.monotonic() - hole_start < BLACK_HOLE_SECONDS

    # The statuses keep the progress last read.
    shown = _percent(kubectl, ns)
    assert all(shown[n] == 20 for n in tracked), {n: shown[n] for n in tracked}
    time.sleep(max(0.0, BLACK_HOLE_SECONDS - (time.monotonic() - hole_start)))
    calls_in_hole = len(switch.held)
    # Without the breaker every active run's poll would call it (200 runs every 5 s: 2,400
    # calls in 60 s); with it, a few calls until it opens, then a probe per cool-down.
    assert calls_in_hole < 50, calls_in_hole

    # MLflow answers again: the statuses catch up.
    switch.forward()
    caught_up = _wait_percent(kubectl, ns, tracked, 50, timeout=150)

    measured = {
        "runs": RUNS + len(fresh),
        "all_running_seconds": round(all_running, 1),
        "first_progress_seconds": round(first_progress, 1),
        "black_hole_seconds": BLACK_HOLE_SECONDS,
        "mlflow_connections_during_black_hole": calls_in_hole,
        "new_runs_running_during_black_hole_seconds": round(fresh_running, 1),
        "lost_job_replaced_during_black_hole_seconds": round(restarted, 1),
        "status_caught_up_after_seconds": round(caught_up, 1),
    }
    print("\nMLflow black hole:", json.dumps(measured, indent=2))
    (tmp_path / "measured.json").write_text(json.dumps(measured))
