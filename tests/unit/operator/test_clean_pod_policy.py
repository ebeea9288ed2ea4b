"""What reconcile() keeps of finished attempts (spec.cleanPodPolicy): the last failed
attempt's Job, pods and ConfigMap stay for `kubectl logs` by default; a Job whose pods may
still run is never kept."""

from typing import Any

import pytest

from tests.unit.operator.test_reconcile import RecordingKube, _body, _reconcile
from tradewind.operator import builders


def _job(attempt: int, failed: bool = False) -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: str(attempt), builders.ROLE_LABEL: "train"}
    meta = {"name": f"r-{attempt}", "labels": labels, "uid": f"job-{attempt}", "owner": "u-1"}
    conditions = [{"type": "Failed", "status": "True"}] if failed else []
    return {"metadata": meta, "spec": {"completions": 2}, "status": {"conditions": conditions}}


def _pod(attempt: int, index: int, phase: str, exit_code: int | None = None) -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: str(attempt), builders.ROLE_LABEL: "train"}
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": "Error"}
        status["containerStatuses"] = [{"state": {"terminated": terminated}}]
    return {"metadata": {"name": f"r-{attempt}-{index}", "labels": labels}, "status": status}


def _deleted(kube: RecordingKube) -> list[str]:
    return [c[1] for c in kube.calls if c[0] == "delete"]


def _with(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body["spec"] |= spec
    return body


def test_the_failed_attempts_job_and_pods_stay_when_the_next_attempt_starts() -> None:
    body = _with(_body(), maxRestarts=2)
    body["status"] = {"phase": "Running", "attempt": 0}
    pods = [_pod(0, 0, "Failed", 1), _pod(0, 1, "Running")]
    kube = RecordingKube()
    decision = _reconcile(body, kube, jobs=[_job(0)], pods=pods)  # the Job is not Failed yet
    assert decision.status.attempt == 1 and decision.status.last_failed_attempt == 0
    assert "Job/r-0" not in _deleted(kube) and "ConfigMap/r-0-config-u-1" not in _deleted(kube)
    body["status"] = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    pods[1]["status"]["phase"] = "Failed"  # the Job controller deleted it: Failed, then gone
    kube = RecordingKube()
    _reconcile(body, kube, jobs=[_job(0, failed=True)], pods=pods)
    assert ("create", "Job") in kube.calls and _deleted(kube) == []


def test_running_keeps_only_the_last_failed_attempt() -> None:
    body = _body()
    body["status"] = {"phase": "Running", "attempt": 2, "restarts": 2, "lastFailedAttempt": 1}
    jobs = [_job(0, failed=True), _job(1, failed=True), _job(2)]
    kube = RecordingKube()
    _reconcile(body, kube, jobs=jobs, pods=[_pod(2, 0, "Running"), _pod(2, 1, "Running")])
    assert _deleted(kube) == ["Job/r-0", "ConfigMap/r-0-config-u-1"]


def test_a_job_whose_pods_may_still_run_is_not_kept() -> None:
    """E.g. rolled for a spec change, or a container that failed in a pod that still runs:
    its pods must not run beside the new attempt's."""
    body = _body()
    body["status"] = {"phase": "Restarting", "attempt": 2, "lastFailedAttempt": 1}
    pods = [_pod(1, 0, "Running", exit_code=1), _pod(1, 1, "Running")]
    kube = RecordingKube()
    _reconcile(body, kube, jobs=[_job(1)], pods=pods)
    assert _deleted(kube) == ["Job/r-1", "ConfigMap/r-1-config-u-1"]


def test_none_keeps_every_failed_attempt_and_all_keeps_none() -> None:
    status = {"phase": "Running", "attempt": 2, "restarts": 2, "lastFailedAttempt": 1}
    jobs = [_job(0, failed=True), _job(1, failed=True), _job(2)]
    running = [_pod(2, 0, "Running"), _pod(2, 1, "Running")]
    kube = RecordingKube()
    _reconcile(_with(_body(), cleanPodPolicy="None") | {"status": status}, kube,
               jobs=jobs, pods=running)  # fmt: skip
    assert _deleted(kube) == []
    kube = RecordingKube()
    _reconcile(_with(_body(), cleanPodPolicy="All") | {"status": status}, kube,
               jobs=jobs, pods=running)  # fmt: skip
    assert _deleted(kube) == ["Job/r-0", "ConfigMap/r-0-config-u-1",
                              "Job/r-1", "ConfigMap/r-1-config-u-1"]  # fmt: skip


@pytest.mark.parametrize(("policy", "kept"), [("Running", True), ("None", True), ("All", False)])
def test_at_the_end_only_all_deletes_the_last_attempt(policy: str, kept: bool) -> None:
    body = _with(_body(), cleanPodPolicy=policy)
    body["status"] = {"phase": "Succeeded", "attempt": 0}
    done = _job(0)
    done["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    kube = RecordingKube()
    _reconcile(body, kube, jobs=[done], pods=[_pod(0, 0, "Succeeded")])
    assert _deleted(kube) == ([] if kept else ["Job/r-0", "ConfigMap/r-0-config-u-1"])
