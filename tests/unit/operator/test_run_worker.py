"""A run's worker when its reconcile fails: backoff between tries (reset by a success), and
a worker whose run is gone stops and leaves the registry."""

import asyncio
import json
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tradewind.api.status import RunStatus
from tradewind.operator.children import Children
from tradewind.operator.kube import Gone
from tradewind.operator.loop import RunWorker
from tradewind.operator.settings import OperatorSettings
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


def _worker(kube: Kube) -> tuple[RunWorker, Workers]:
    body = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {},
    }
    registry = Workers("reconcile")
    memo = kopf.Memo(
        settings=OperatorSettings(retry_max_seconds=4.0),
        kube=kube,
        reconcile_slots=asyncio.Semaphore(1),
        run_workers=registry,
    )
    memo.children = Children()
    worker = RunWorker(body, memo)
    registry.by_key[worker.ref] = worker
    return worker, registry


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
