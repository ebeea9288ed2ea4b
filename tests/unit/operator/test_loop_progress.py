"""A run's reconcile never waits on MLflow: it asks for a read in the background and writes
the read's result into the status on a later pass (woken by it)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from typing import Any

import kopf
import pytest

from tests.unit.operator.test_progress import _MLflow
from tradewind.api.status import RunStatus
from tradewind.operator import loop, progress
from tradewind.operator.loop import RunWorker
from tradewind.operator.progress import ProgressReader
from tradewind.operator.reconcile import SpecCache
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import Decision

BODY = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "r", "namespace": "ns", "uid": "u-1", "generation": 1,
                 "resourceVersion": "1"},
    "spec": {"training": {"epochs": 10}},
}  # fmt: skip


class StatusKube:
    def __init__(self) -> None:
        self.written: list[RunStatus] = []

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str:
        self.written.append(status)
        return str(100 + len(self.written))


def _running(snapshot: dict[str, Any], *args: Any, spec_cache: SpecCache, **_: Any) -> Decision:
    spec_cache.parse(snapshot)
    return Decision(status=RunStatus(phase="Running"))


def _worker(uri: str, monkeypatch: pytest.MonkeyPatch) -> tuple[RunWorker, StatusKube]:
    monkeypatch.setattr(loop, "reconcile", _running)
    kube = StatusKube()
    memo = kopf.Memo(
        settings=OperatorSettings(mlflow_tracking_uri=uri, status_poll_seconds=1),
        kube=kube,
        progress=ProgressReader(uri),
        reconcile_slots=asyncio.Semaphore(1),
    )
    return RunWorker(dict(BODY), memo, {}, {}), kube  # type: ignore[arg-type]


def test_a_reconcile_returns_while_a_black_holed_mlflow_is_still_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hole = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    monkeypatch.setattr(progress, "MLFLOW_TIMEOUT_SECONDS", 2.0)
    worker, kube = _worker(f"http://127.0.0.1:{hole.getsockname()[1]}", monkeypatch)

    async def once() -> tuple[Decision | None, bool]:
        decision = await worker._reconcile_once()
        reading = ("ns", "r") in worker.memo.progress._reading
        while worker.memo.progress._reading:  # let the read time out before the loop closes
            await asyncio.sleep(0.05)
        return decision, reading

    try:
        decision, reading = asyncio.run(once())
    finally:
        hole.close()
    assert decision is not None and decision.status.phase == "Running"
    assert reading and kube.written == []


def test_what_was_read_wakes_the_worker_and_goes_into_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker, kube = _worker(f"http://127.0.0.1:{server.server_address[1]}", monkeypatch)

    async def twice() -> None:
        await worker._reconcile_once()
        await asyncio.wait_for(worker.wakeup.wait(), 10)
        await worker._reconcile_once()

    try:
        asyncio.run(twice())
    finally:
        server.shutdown()
    (status,) = kube.written
    assert status.phase == "Running" and status.progress.percent == 20
    assert status.metrics["val_loss"] == 0.25
    assert worker.written["version"] == "101"  # its echo from the watch is not news
    assert "tradewind.uid\" = 'u-1'" in _MLflow.searches[-1]["filter"]
