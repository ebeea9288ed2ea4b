"""A run's reconcile never waits on MLflow: an active run is followed (its namespace is read
in the background every poll period), and a read that found news wakes its worker to write
that into the status."""

from __future__ import annotations

import asyncio
import collections
import http.server
import json
import socket
import threading
from typing import Any, ClassVar

import kopf
import pytest

from tests.unit.operator.test_progress import _MLflow, _mlflow_run
from tradewind.api.status import RunStatus
from tradewind.operator import loop, progress
from tradewind.operator.children import Children
from tradewind.operator.loop import RunWorker
from tradewind.operator.progress import ProgressReader
from tradewind.operator.reconcile import SpecCache
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import Decision
from tradewind.operator.workers import Workers

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


def _worker(
    uri: str, monkeypatch: pytest.MonkeyPatch, poll_seconds: float = 1
) -> tuple[RunWorker, StatusKube]:
    monkeypatch.setattr(loop, "reconcile", _running)
    kube = StatusKube()
    settings = OperatorSettings(mlflow_tracking_uri=uri, status_poll_seconds=poll_seconds)
    memo = kopf.Memo(
        settings=settings,
        kube=kube,
        progress=ProgressReader.from_settings(settings),
        reconcile_slots=asyncio.Semaphore(1),
        start_slots=asyncio.Semaphore(1),
        children=Children(),
        run_workers=Workers("reconcile"),
        run_phases=collections.Counter(),
    )
    memo.children.listed.set()
    return RunWorker(dict(BODY), memo), kube


def test_a_reconcile_returns_while_a_black_holed_mlflow_is_still_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hole = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    monkeypatch.setattr(progress, "MLFLOW_TIMEOUT_SECONDS", 2.0)
    worker, kube = _worker(f"http://127.0.0.1:{hole.getsockname()[1]}", monkeypatch)

    async def once() -> tuple[Decision | None, bool]:
        await worker._reconcile_once()  # Running: followed, its first read starts at once
        await asyncio.sleep(0.2)
        decision = await worker._reconcile_once()
        reading = bool(worker.memo.progress._scanning)
        while worker.memo.progress._scanning:  # let the read time out before the loop closes
            await asyncio.sleep(0.05)
        return decision, reading

    try:
        decision, reading = asyncio.run(once())
    finally:
        hole.close()
    assert decision is not None and decision.status.phase == "Running"
    assert reading and kube.written == []  # the reconcile returned while MLflow was read


def test_what_was_read_wakes_the_worker_and_goes_into_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker, kube = _worker(f"http://127.0.0.1:{server.server_address[1]}", monkeypatch)

    async def twice() -> None:
        await worker._reconcile_once()  # followed: a read at once, whose news wakes it
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
    assert "tradewind.namespace\" = 'ns'" in _MLflow.searches[-1]["filter"]


class _Finishing(_MLflow):
    """MLflow whose run logs its last epoch's metrics as the run ends."""

    values: ClassVar[dict[str, float]] = {"val_loss": 0.5, "epoch": 9.0}

    def do_POST(self) -> None:
        self.searches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._answer({"runs": [_mlflow_run(dict(self.values))]})


def test_a_run_that_ended_gets_its_last_metrics_in_one_final_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Finishing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker, kube = _worker(f"http://127.0.0.1:{server.server_address[1]}", monkeypatch)
    phase = {"now": "Running"}

    def reconcile(snapshot: dict[str, Any], *args: Any, spec_cache: SpecCache, **_: Any) -> Any:
        spec_cache.parse(snapshot)
        return Decision(status=RunStatus(phase=phase["now"]))

    monkeypatch.setattr(loop, "reconcile", reconcile)

    async def through_the_end() -> int:
        await worker._reconcile_once()  # running: followed
        await asyncio.wait_for(worker.wakeup.wait(), 10)
        worker.wakeup.clear()
        await worker._reconcile_once()  # its result, written
        _Finishing.values = {"val_loss": 0.25, "epoch": 10.0}  # the last epoch, then the end
        phase["now"] = "Succeeded"
        await worker._reconcile_once()  # ended: no longer followed; the final read
        assert worker.ref not in worker.memo.progress.following
        await asyncio.wait_for(worker.wakeup.wait(), 10)
        await worker._reconcile_once()  # its result, written
        reads = len(_Finishing.searches)
        await worker._reconcile_once()  # and no more reads
        return len(_Finishing.searches) - reads

    try:
        more = asyncio.run(through_the_end())
    finally:
        server.shutdown()
    running, ended = kube.written
    assert running.metrics["val_loss"] == 0.5 and running.progress.epoch == 9
    assert ended.phase == "Succeeded" and ended.metrics["val_loss"] == 0.25
    assert ended.progress.epoch == 10 and more == 0


def test_an_ended_runs_final_read_is_not_put_off_by_many_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, _ = _worker("http://127.0.0.1:9", monkeypatch, poll_seconds=15)
    worker.memo.settings = OperatorSettings(
        mlflow_tracking_uri="http://127.0.0.1:9", status_poll_seconds=15,
        periodic_reconciles_per_second=10,
    )  # fmt: skip
    worker.spec.parse(dict(BODY))
    registry = worker.memo.run_workers.by_key
    registry.update({("TrainingRun", "ns", f"r{n}"): worker for n in range(6000)})
    worker.final_read = "due"  # an ended run's last read, if one under way held it back
    final = worker._next_wake(Decision(status=RunStatus(phase="Succeeded")), worker.memo.settings)
    assert final == 15.0  # not stretched: few runs are ending at once


class _Steady(_MLflow):
    """MLflow whose run logs nothing new until told to."""

    values: ClassVar[dict[str, float]] = {"val_loss": 0.5, "epoch": 3.0}

    def do_POST(self) -> None:
        self.searches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._answer({"runs": [_mlflow_run(dict(self.values))]})


def test_a_read_that_finds_nothing_new_costs_no_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Steady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    worker, kube = _worker(uri, monkeypatch, poll_seconds=0.1)

    def keeping(snapshot: dict[str, Any], *args: Any, spec_cache: SpecCache, **_: Any) -> Any:
        spec_cache.parse(snapshot)  # the status as stored (or as last written), Running
        status = RunStatus.model_validate(snapshot.get("status") or {})
        return Decision(status=status.model_copy(update={"phase": "Running"}))

    monkeypatch.setattr(loop, "reconcile", keeping)

    async def scenario() -> tuple[bool, int, bool]:
        await worker._reconcile_once()  # followed: the first read is news
        await asyncio.wait_for(worker.wakeup.wait(), 10)
        worker.wakeup.clear()
        await worker._reconcile_once()  # written
        reads = len(_Steady.searches)
        while len(_Steady.searches) < reads + 4:  # the same metrics, four times
            await asyncio.sleep(0.02)
        quiet = not worker.wakeup.is_set()
        _Steady.values = {"val_loss": 0.4, "epoch": 4.0}  # the next epoch
        await asyncio.wait_for(worker.wakeup.wait(), 10)
        return quiet, len(_Steady.searches) - reads, worker.wakeup.is_set()

    try:
        quiet, reads, woken = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert quiet and reads >= 4  # four reads found what the status held: no wake, no reconcile
    assert woken  # the next epoch's read wakes the worker
    (first,) = kube.written
    assert first.progress.epoch == 3
