"""Which child events wake a run's worker: only those that change what a reconcile reads of
the child (the Job controller's count updates and the scheduler's bindings do not), and a
run's own status write coming back through the watch does not."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tradewind.operator import builders, observed
from tradewind.operator.children import ChildIndex, entry
from tradewind.operator.loop import RunWorker


def _job(**status: Any) -> dict[str, Any]:
    meta = {"name": "r-0", "namespace": "ns", "labels": {builders.RUN_LABEL: "r"}}
    return {"metadata": meta, "spec": {"completions": 2}, "status": status}


def _pod(**status: Any) -> dict[str, Any]:
    meta = {"name": "r-0-0", "namespace": "ns", "labels": {builders.RUN_LABEL: "r"}}
    return {"metadata": meta, "spec": {}, "status": status}


def _put(index: ChildIndex, body: dict[str, Any]) -> bool:
    """Whether keeping `body` changed what its run's reconcile reads."""
    child, run, slim = entry(index.plural, body)
    return bool(index.put(child, run, slim))


def test_job_count_updates_do_not_count_as_changes_and_conditions_do() -> None:
    index = ChildIndex("jobs")
    assert _put(index, _job())  # first sighting
    assert not _put(index, _job(active=2))
    assert not _put(index, _job(active=2, ready=2))
    failed = _job(
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    )
    assert _put(index, failed)
    assert not _put(index, failed)
    suspended = copy.deepcopy(failed)
    suspended["spec"]["suspend"] = True
    assert _put(index, suspended)
    assert index.remove(("ns", "r-0")) == {("", "ns", "r")}
    assert _put(index, suspended)  # seen again after its deletion


def test_a_pods_binding_is_not_a_change_and_its_start_or_failure_is() -> None:
    index = ChildIndex("pods")
    assert _put(index, _pod(phase="Pending"))
    bound = _pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
    bound["spec"]["nodeName"] = "kwok-0"
    assert not _put(index, bound)
    running = _pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])
    assert _put(index, running)
    oom = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    assert _put(index, _pod(phase="Failed", containerStatuses=[{"state": oom}]))
    other = _pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])
    other["metadata"]["namespace"] = "elsewhere"  # another child, of another run
    assert _put(index, other)
    assert len(index.get(("", "ns", "r"))) == 1 and len(index.get(("", "elsewhere", "r"))) == 1


def test_a_runs_own_status_write_coming_back_does_not_wake_its_worker() -> None:
    def run(version: str) -> dict[str, Any]:
        meta = {"name": "r", "namespace": "ns", "uid": "u", "resourceVersion": version}
        return {"kind": "TrainingRun", "metadata": meta, "spec": {"nodes": 2}}

    async def scenario() -> None:
        worker = RunWorker(run("5"), memo=None)  # type: ignore[arg-type]
        worker.written.update(version="7", status={"phase": "Pending"})
        worker.update(run("7"))  # our write's echo: kept, no wake-up
        assert not worker.wakeup.is_set()
        assert worker.body["metadata"]["resourceVersion"] == "7"
        assert worker.written == {"version": "7"}  # the body holds the status now: one copy
        worker.update(run("8"))  # anyone else's change wakes it
        assert worker.wakeup.is_set()

    asyncio.run(scenario())


def test_the_index_keeps_only_the_labels_the_status_logic_reads() -> None:
    body = _pod(phase="Running")
    body["metadata"]["labels"] |= {
        builders.ATTEMPT_LABEL: "1",
        builders.ROLE_LABEL: "train",
        "batch.kubernetes.io/job-name": "r-1",
        "controller-uid": "c0ffee",
    }
    assert observed.pod(body)["metadata"] == {
        "name": "r-0-0",
        "labels": {builders.ATTEMPT_LABEL: "1", builders.ROLE_LABEL: "train"},
    }
