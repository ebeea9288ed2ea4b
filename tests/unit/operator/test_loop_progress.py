"""A run's reconcile never waits on MLflow: between reconciles the worker asks for a read in
the background, and a read that found news wakes it to write that into the status."""

from __future__ import annotations

import asyncio
import collections
import http.server
import json
import math
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


def _worker(uri: str, monkeypatch: pytest.MonkeyPatch) -> tuple[RunWorker, StatusKube]:
    monkeypatch.setattr(loop, "reconcile", _running)
    kube = StatusKube()
    memo = kopf.Memo(
        settings=OperatorSettings(mlflow_tracking_uri=uri, status_poll_seconds=1),
        kube=kube,
        progress=ProgressReader(uri),
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
        first = await worker._reconcile_once()
        await worker._sleep_reading_progress(first, 0.2)  # the first read is due at once
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
    assert reading and kube.written == []  # the reconcile returned while MLflow was read


def test_what_was_read_wakes_the_worker_and_goes_into_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker, kube = _worker(f"http://127.0.0.1:{server.server_address[1]}", monkeypatch)

    async def twice() -> None:
        decision = await worker._reconcile_once()
        await worker._sleep_reading_progress(decision, 10)  # a read at once; its news wakes it
        assert worker.wakeup.is_set()
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
        running = await worker._reconcile_once()
        await worker._sleep_reading_progress(running, 10)  # running: a progress read
        assert worker.wakeup.is_set()
        worker.wakeup.clear()
        await worker._reconcile_once()  # its result, written
        _Finishing.values = {"val_loss": 0.25, "epoch": 10.0}  # the last epoch, then the end
        phase["now"] = "Succeeded"
        await worker._reconcile_once()  # ended: the final read
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


def test_with_many_runs_active_each_reads_its_progress_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, _ = _worker("http://127.0.0.1:9", monkeypatch)
    worker.memo.settings = OperatorSettings(
        mlflow_tracking_uri="http://127.0.0.1:9", status_poll_seconds=15,
        periodic_reconciles_per_second=10,
    )  # fmt: skip
    worker.spec.parse(dict(BODY))
    running = Decision(status=RunStatus(phase="Running"))
    phases = worker.memo.run_phases
    registry = worker.memo.run_workers.by_key
    registry.update({("TrainingRun", "ns", f"r{n}"): worker for n in range(6000)})
    worker.last_progress = 1000.0
    phases.update(Running=5, Succeeded=5000)  # ended runs read nothing
    few = worker._next_read(running)
    phases.update(Pending=500, Running=495)
    many = worker._next_read(running)
    worker.final_read = "due"  # an ended run's last read, if one under way held it back
    final = worker._next_wake(Decision(status=RunStatus(phase="Succeeded")), worker.memo.settings)
    assert few == 1015.0 and many == 1100.0  # 1000 active runs: at most 10 reads a second
    assert final == 15.0  # not stretched: few runs are ending at once
    assert worker._next_read(Decision(status=RunStatus(phase="Succeeded"))) == math.inf


class _Steady(_MLflow):
    """MLflow whose run logs nothing new until told to."""

    values: ClassVar[dict[str, float]] = {"val_loss": 0.5, "epoch": 3.0}

    def do_POST(self) -> None:
        self.searches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._answer({"runs": [_mlflow_run(dict(self.values))]})


def test_a_read_that_finds_nothing_new_costs_no_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Steady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker, kube = _worker(f"http://127.0.0.1:{server.server_address[1]}", monkeypatch)
    worker.memo.settings = OperatorSettings(
        mlflow_tracking_uri=worker.memo.progress.uri, status_poll_seconds=0.1
    )

    def keeping(snapshot: dict[str, Any], *args: Any, spec_cache: SpecCache, **_: Any) -> Any:
        spec_cache.parse(snapshot)  # the status as stored (or as last written), Running
        status = RunStatus.model_validate(snapshot.get("status") or {})
        return Decision(status=status.model_copy(update={"phase": "Running"}))

    monkeypatch.setattr(loop, "reconcile", keeping)

    async def scenario() -> tuple[bool, int, bool]:
        decision = await worker._reconcile_once()
        await worker._sleep_reading_progress(decision, 10)  # the first read: news
        worker.wakeup.clear()
        decision = await worker._reconcile_once()  # written
        sleeping = asyncio.ensure_future(worker._sleep_reading_progress(decision, 30))
        reads = len(_Steady.searches)
        while len(_Steady.searches) < reads + 4 and not sleeping.done():  # the same metrics
            await asyncio.sleep(0.02)
        quiet = not worker.wakeup.is_set() and not sleeping.done()
        _Steady.values = {"val_loss": 0.4, "epoch": 4.0}  # the next epoch
        await asyncio.wait_for(sleeping, 10)
        return quiet, len(_Steady.searches) - reads, worker.wakeup.is_set()

    try:
        quiet, reads, woken = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert quiet and reads >= 4  # four reads found what the status held: no wake, no reconcile
    assert woken  # the next epoch's read wakes the worker
    (first,) = kube.written
    assert first.progress.epoch == 3
