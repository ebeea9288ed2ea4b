"""A run's worker when its reconcile fails: backoff between tries (reset by a success), and
a worker whose run is gone stops and leaves the registry; new runs start a few at a time."""

import asyncio
import collections
import json
import threading
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tradewind.api.status import RunStatus
from tradewind.operator import metrics
from tradewind.operator.children import Children
from tradewind.operator.kube import Gone
from tradewind.operator.loop import RunWorker
from tradewind.operator.progress import ProgressReader
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import Decision
from tradewind.operator.workers import Workers


class Kube:
    """Creates succeed; each status write raises the next of `failures`, then succeeds."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)

    def create(self, manifest: dict[str, Any]) -> None:
        pass

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str:
        if self.failures:
            raise self.failures.pop(0)
        return "2"

    def event(self, *args: Any) -> None:
        pass


def _overloaded() -> ApiException:
    exc = ApiException(status=503, reason="Service Unavailable")
    exc.body = json.dumps({"message": "the server is currently unable to handle the request"})
    exc.headers = {}
    return exc


def _body(name: str = "r", status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1},
        "spec": {},
    }
    return body | ({"status": status} if status else {})


def _memo(kube: Any, reconcile_slots: int = 1, start_slots: int = 1) -> kopf.Memo:
    memo = kopf.Memo(
        settings=OperatorSettings(retry_max_seconds=4.0),
        kube=kube,
        progress=ProgressReader(None),
        reconcile_slots=asyncio.Semaphore(reconcile_slots),
        start_slots=asyncio.Semaphore(start_slots),
        run_workers=Workers("reconcile"),
        run_phases=collections.Counter(),
    )
    memo.children = Children()
    memo.children.listed.set()
    return memo


def _worker(kube: Kube) -> tuple[RunWorker, Workers]:
    memo = _memo(kube)
    worker = RunWorker(_body(), memo)
    memo.run_workers.by_key[worker.ref] = worker
    return worker, memo.run_workers


def test_failures_back_off_up_to_the_cap() -> None:
    async def scenario() -> list[float]:
        worker, _ = _worker(Kube(*[_overloaded() for _ in range(6)]))
        waits = []
        for _ in range(6):
            assert await worker._reconcile_now(0.0) is None
            waits.append(worker._next_wake(None, worker.memo.settings))
        return waits

    waits = asyncio.run(scenario())
    assert 0.5 <= waits[0] <= 1  # 1 s, jittered in its upper half
    assert all(2 <= w <= 4 for w in waits[3:])  # capped at retry_max_seconds


def test_a_run_gone_under_its_worker_stops_it() -> None:
    async def scenario() -> tuple[RunWorker, Workers]:
        worker, registry = _worker(Kube(Gone("TrainingRun ns/r")))
        assert await worker._reconcile_now(0.0) is None
        return worker, registry

    worker, registry = asyncio.run(scenario())
    assert worker.stopped and registry.by_key == {}


class HeldKube(Kube):
    """Creates wait until `go` is set; `calls` names the run of each create, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.calls: list[str] = []

    def create(self, manifest: dict[str, Any]) -> None:
        self.calls.append(manifest["metadata"]["labels"]["tradewind.dev/run"])
        self.go.wait(10)


def test_new_runs_create_their_children_a_start_slot_at_a_time() -> None:
    async def scenario() -> list[str]:
        kube = HeldKube()
        memo = _memo(kube, reconcile_slots=4, start_slots=1)
        waiting = metrics.RUNS_WAITING_TO_START._value.get()
        tasks = [asyncio.create_task(RunWorker(_body(n), memo)._reconcile_once()) for n in "ab"]
        while not kube.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # room for the other run to start creating, were it let in
        assert len(kube.calls) == 1
        assert metrics.RUNS_WAITING_TO_START._value.get() == waiting + 1
        kube.go.set()
        decisions = await asyncio.gather(*tasks)
        assert all(d is not None and "create_attempt" in d.actions for d in decisions)
        assert metrics.RUNS_WAITING_TO_START._value.get() == waiting
        return kube.calls

    calls = asyncio.run(scenario())
    assert sorted(calls) == ["a"] * 3 + ["b"] * 3  # ConfigMap, Service, Job each
    assert len(set(calls[:3])) == 1 and len(set(calls[3:])) == 1  # one run's, then the other's


def test_a_run_with_a_status_does_not_wait_for_a_start_slot() -> None:
    async def scenario() -> None:
        memo = _memo(Kube(), reconcile_slots=4, start_slots=1)
        await memo.start_slots.acquire()  # every start slot taken
        pending = {"phase": "Pending", "attempt": 0}
        worker = RunWorker(_body("c", pending), memo)
        assert await asyncio.wait_for(worker._reconcile_once(), 5) is not None

    asyncio.run(scenario())


def test_with_more_runs_than_a_minute_of_resyncs_allows_each_resyncs_less_often() -> None:
    async def scenario() -> list[float]:
        memo = _memo(Kube())
        memo.settings = OperatorSettings(periodic_reconciles_per_second=10)
        worker = RunWorker(_body(), memo)
        running = Decision(status=RunStatus(phase="Running"))
        waits = []
        for runs in (1, 600, 3000):
            memo.run_workers.by_key = {("TrainingRun", "ns", f"r{n}"): worker for n in range(runs)}
            waits.append(worker._next_wake(running, memo.settings))
        return waits

    assert asyncio.run(scenario()) == [60.0, 60.0, 300.0]  # at most 10 resyncs a second


def test_the_runs_in_each_phase_are_tallied_while_their_workers_run() -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        memo = _memo(Kube(), reconcile_slots=4, start_slots=4)
        workers = [RunWorker(_body(n), memo) for n in "abc"]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        while memo.run_phases.total() < 3:
            await asyncio.sleep(0.01)
        during = dict(+memo.run_phases)
        workers[0].stop()
        await tasks[0]
        after_one = dict(+memo.run_phases)
        for worker in workers[1:]:
            worker.stop()
        await asyncio.gather(*tasks[1:])
        return during, after_one

    during, after_one = asyncio.run(scenario())
    assert during == {"Pending": 3} and after_one == {"Pending": 2}
