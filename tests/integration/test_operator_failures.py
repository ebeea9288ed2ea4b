"""Failures the operator must show, on the real control plane (kube-apiserver, the Job
controller, ResourceQuota and PodSecurity admission, kwok nodes): a child the apiserver
refuses and pods the Job controller cannot create appear in the run's status with the
apiserver's message and one Warning Event; a run created again under its old name never
adopts the old Job; a TrainingRun and an RLRun of one name run side by side."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack.kwok import HOLD_LABEL

pytestmark = pytest.mark.integration

SECONDS = 30
"""How long a refusal may take to reach the status: seconds, not the 15 s retry loop."""


def _run(name: str, kind: str = "TrainingRun", **spec: Any) -> dict[str, Any]:
    if kind == "RLRun":
        spec = {"agents": [{"name": "ppo", "algorithm": "ppo"}], **spec}
    meta = {"name": name}
    return {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def _until(what: str, probe: Callable[[], Any], timeout: float = SECONDS) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.3)
    return found


def _condition(kubectl: Kubectl, ns: str, ref: str, type_: str) -> dict[str, Any]:
    status = kubectl.get(ref, "-n", ns).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def _condition_when(kubectl: Kubectl, ns: str, ref: str, type_: str, reason: str) -> Any:
    """A probe: the condition once its reason is `reason`, else None."""

    def probe() -> dict[str, Any] | None:
        condition = _condition(kubectl, ns, ref, type_)
        return condition if condition.get("reason") == reason else None

    return probe


def _events(kubectl: Kubectl, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},reason={reason}"
    return list(kubectl.get("events", "-n", ns, "--field-selector", selector)["items"])


def _quota(kubectl: Kubectl, ns: str, **hard: str) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "none", "namespace": ns},
        "spec": {"hard": hard},
    }
    kubectl.apply(quota)
    # Admission refuses everything while the quota controller has not computed the usage.
    _until(
        "the quota's usage computed",
        lambda: kubectl.get("resourcequota/none", "-n", ns).get("status", {}).get("hard"),
    )


def test_an_invalid_job_fails_the_run_with_the_apiservers_message(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    # A passthrough volume with a typo: `claimname` is dropped, the claim has no name.
    volume = {"name": "data", "persistentVolumeClaim": {"claimname": "market-data"}}
    kubectl.apply(_run("typo", podTemplate={"volumes": [volume]}), "-n", namespace)
    failed = _until(
        "Failed with the apiserver's message",
        _condition_when(kubectl, namespace, "trainingrun/typo", "Failed", "CreateFailed"),
    )
    assert failed["status"] == "True"
    assert 'Job.batch "typo-0" is invalid' in failed["message"]
    assert "persistentVolumeClaim.claimName: Required value" in failed["message"]
    created = _condition(kubectl, namespace, "trainingrun/typo", "Created")
    assert created["status"] == "False" and created["reason"] == "CreateFailed"
    assert kubectl.get("jobs", "-n", namespace)["items"] == []
    (event,) = _until(
        "one Warning Event", lambda: _events(kubectl, namespace, "typo", "CreateFailed")
    )
    assert event["type"] == "Warning" and 'Job.batch "typo-0" is invalid' in event["message"]


def test_a_job_quota_keeps_the_run_pending_with_the_reason_until_it_is_lifted(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _quota(kubectl, namespace, **{"count/jobs.batch": "0"})
    kubectl.apply(_run("quota", podTemplate={"labels": {HOLD_LABEL: "true"}}), "-n", namespace)
    ready = _until(
        "the quota refusal in status",
        _condition_when(kubectl, namespace, "trainingrun/quota", "Ready", "CreateFailed"),
    )
    assert 'jobs.batch "quota-0" is forbidden: exceeded quota: none' in ready["message"]
    assert kubectl.get("trainingrun/quota", "-n", namespace)["status"]["phase"] == "Pending"
    events = _events(kubectl, namespace, "quota", "CreateFailed")
    assert len(events) == 1 and events[0]["type"] == "Warning"  # retried, said once
    kubectl.run("delete", "resourcequota/none", "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/quota", "-n", namespace, timeout=120)
    created = _condition(kubectl, namespace, "trainingrun/quota", "Created")
    assert created["status"] == "True"


def test_pods_refused_by_quota_show_the_job_controllers_message(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    _quota(kubectl, namespace, pods="0")
    kubectl.apply(_run("nopods"), "-n", namespace)
    ready = _until(
        "the pods' refusal in status",
        _condition_when(kubectl, namespace, "trainingrun/nopods", "Ready", "PodsRefused"),
    )
    assert "exceeded quota: none" in ready["message"] and "nopods-0-0" in ready["message"]
    assert kubectl.get("trainingrun/nopods", "-n", namespace)["status"]["phase"] == "Pending"
    events = _events(kubectl, namespace, "nopods", "PodsRefused")
    assert [e["type"] for e in events] == ["Warning"], [e["message"] for e in events]


def test_pods_that_violate_podsecurity_fail_the_run(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # No security context makes a host path compliant: the Job is created, its pods are not.
    volume = {"name": "host", "hostPath": {"path": "/var/tmp"}}
    kubectl.apply(_run("hostpath", podTemplate={"volumes": [volume]}), "-n", namespace)
    kubectl.wait("--for=condition=Failed", "trainingrun/hostpath", "-n", namespace, timeout=SECONDS)
    failed = _condition(kubectl, namespace, "trainingrun/hostpath", "Failed")
    assert failed["reason"] == "PodsRefused"
    assert 'violates PodSecurity "restricted:latest"' in failed["message"]
    assert "hostPath" in failed["message"]
    (event,) = _events(kubectl, namespace, "hostpath", "PodsRefused")
    assert event["type"] == "Warning"
    kubectl.wait("--for=delete", "job/hostpath-0", "-n", namespace)  # no retrying for ever


def test_a_run_created_again_never_adopts_the_old_runs_job(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    run = _run("again", podTemplate={"labels": {HOLD_LABEL: "true"}})
    kubectl.apply(run, "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/again", "-n", namespace)
    old_uid = kubectl.get("trainingrun/again", "-n", namespace)["metadata"]["uid"]
    hold = json.dumps({"metadata": {"finalizers": ["tradewind.dev/test-hold"]}})
    kubectl.run("patch", "job/again-0", "-n", namespace, "--type=merge", "-p", hold)
    kubectl.run("delete", "trainingrun/again", "-n", namespace)
    # The garbage collector deletes the old Job; the finalizer holds it (and its running pods).
    _until(
        "the old Job being deleted",
        lambda: kubectl.get("job/again-0", "-n", namespace)["metadata"].get("deletionTimestamp"),
    )
    kubectl.apply(run, "-n", namespace)
    new_uid = kubectl.get("trainingrun/again", "-n", namespace)["metadata"]["uid"]
    ready = _until(
        "the old Job named in status",
        _condition_when(kubectl, namespace, "trainingrun/again", "Ready", "CreateFailed"),
    )
    assert f"earlier TrainingRun again (uid {old_uid})" in ready["message"]
    status = kubectl.get("trainingrun/again", "-n", namespace)["status"]
    assert status["phase"] == "Pending" and status.get("nodesReady", 0) == 0  # not its pods
    old_job = kubectl.get("job/again-0", "-n", namespace)
    assert [r["uid"] for r in old_job["metadata"]["ownerReferences"]] == [old_uid]

    release = json.dumps({"metadata": {"finalizers": None}})
    kubectl.run("patch", "job/again-0", "-n", namespace, "--type=merge", "-p", release)
    kubectl.wait("--for=condition=Running", "trainingrun/again", "-n", namespace, timeout=120)
    job = kubectl.get("job/again-0", "-n", namespace)
    assert [r["uid"] for r in job["metadata"]["ownerReferences"]] == [new_uid]
    assert job["metadata"]["labels"]["tradewind.dev/run-uid"] == new_uid


def test_a_trainingrun_and_an_rlrun_of_one_name_run_side_by_side(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("twin"), "-n", namespace)
    kubectl.apply(_run("twin", kind="RLRun"), "-n", namespace)
    for ref in ("trainingrun/twin", "rlrun/twin"):
        kubectl.wait("--for=condition=Succeeded", ref, "-n", namespace, timeout=120)
    uids = {
        kind: kubectl.get(f"{kind.lower()}/twin", "-n", namespace)["metadata"]["uid"]
        for kind in ("TrainingRun", "RLRun")
    }
    jobs = {
        j["metadata"]["name"]: j["metadata"]["ownerReferences"][0]["uid"]
        for j in kubectl.get("jobs", "-n", namespace)["items"]
    }
    assert jobs == {"twin-0": uids["TrainingRun"], "twin-rl0": uids["RLRun"]}
    for kind in ("trainingrun", "rlrun"):
        status = kubectl.get(f"{kind}/twin", "-n", namespace)["status"]
        assert status.get("restarts", 0) == 0 and status.get("attempt", 0) == 0
