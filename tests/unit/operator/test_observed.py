"""Which child events wake a run's worker: only those that change what a reconcile reads of
the child (the Job controller's count updates and the scheduler's bindings do not), and a
run's own status write coming back through the watch does not."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from tradewind.operator import builders, observed
from tradewind.operator.loop import RunWorker
from tradewind.operator.observed import Changes


def _job(**status: Any) -> dict[str, Any]:
    meta = {"name": "r-0", "namespace": "ns", "labels": {builders.RUN_LABEL: "r"}}
    return {"metadata": meta, "spec": {"completions": 2}, "status": status}


def _pod(**status: Any) -> dict[str, Any]:
    meta = {"name": "r-0-0", "namespace": "ns", "labels": {builders.RUN_LABEL: "r"}}
    return {"metadata": meta, "spec": {}, "status": status}


def test_job_count_updates_do_not_count_as_changes_and_conditions_do() -> None:
    changes = Changes()
    assert changes.changed("jobs", _job(), "ADDED")  # first sighting
    assert not changes.changed("jobs", _job(active=2), "MODIFIED")
    assert not changes.changed("jobs", _job(active=2, ready=2), "MODIFIED")
    failed = _job(
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    )
    assert changes.changed("jobs", failed, "MODIFIED")
    assert not changes.changed("jobs", failed, "MODIFIED")
    suspended = copy.deepcopy(failed)
    suspended["spec"]["suspend"] = True
    assert changes.changed("jobs", suspended, "MODIFIED")
    assert changes.changed("jobs", suspended, "DELETED")
    assert changes.changed("jobs", suspended, None)  # seen again after its deletion


def test_a_pods_binding_is_not_a_change_and_its_start_or_failure_is() -> None:
    changes = Changes()
    assert changes.changed("pods", _pod(phase="Pending"), "ADDED")
    bound = _pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
    bound["spec"]["nodeName"] = "kwok-0"
    assert not changes.changed("pods", bound, "MODIFIED")
    running = _pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])
    assert changes.changed("pods", running, "MODIFIED")
    oom = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    assert changes.changed(
        "pods", _pod(phase="Failed", containerStatuses=[{"state": oom}]), "MODIFIED"
    )
    other = _pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])
    other["metadata"]["namespace"] = "elsewhere"  # another child: its own fingerprint
    assert changes.changed("pods", other, "ADDED")


def test_a_runs_own_status_write_coming_back_does_not_wake_its_worker() -> None:
    def run(version: str) -> dict[str, Any]:
        meta = {"name": "r", "namespace": "ns", "uid": "u", "resourceVersion": version}
        return {"kind": "TrainingRun", "metadata": meta, "spec": {"nodes": 2}}

    async def scenario() -> None:
        worker = RunWorker(run("5"), memo=None, jobs_index={}, pods_index={})  # type: ignore[arg-type]
        worker.written.update(version="7", status={"phase": "Pending"})
        worker.update(run("7"))  # our write's echo: kept, no wake-up
        assert not worker.wakeup.is_set()
        assert worker.body["metadata"]["resourceVersion"] == "7"
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
