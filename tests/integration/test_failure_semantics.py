"""Failure semantics on the real control plane (kube-apiserver's Eviction API, the Job
controller, kwok nodes): a failed attempt's Job and pods stay for `kubectl logs` while the
next runs; an evicted pod restarts the attempt without counting a restart; a spec change
rolls a new attempt and observedGeneration follows the pods; a gang that cannot be placed
times out (docs/failures.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack.kwok import FAIL_EXIT_CODE, FAIL_LABEL, FAIL_REASON, HOLD_LABEL

pytestmark = pytest.mark.integration

HOLD_FINALIZER = "tradewind.dev/test-hold"
"""Keeps an evicted pod terminating (with its DisruptionTarget condition) until removed."""


def _run(name: str, **spec: Any) -> dict[str, Any]:
    meta = {"name": name}
    return {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "metadata": meta,
            "spec": spec}  # fmt: skip


def _status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl.get(f"trainingrun/{name}", "-n", ns).get("status") or {})


def _wait_for(kubectl: Kubectl, ns: str, name: str, path: str, value: Any) -> None:
    kubectl.wait(f"--for=jsonpath={{.status.{path}}}={value}", f"trainingrun/{name}", "-n", ns)


def _pods(kubectl: Kubectl, ns: str, name: str, attempt: int) -> list[dict[str, Any]]:
    selector = f"tradewind.dev/run={name},tradewind.dev/attempt={attempt}"
    pods = kubectl.get("pods", "-n", ns, "-l", selector)["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _patch(kubectl: Kubectl, ns: str, ref: str, patch: dict[str, Any]) -> None:
    kubectl.run("patch", ref, "-n", ns, "--type=merge", "-p", json.dumps(patch))


def _events(kubectl: Kubectl, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},reason={reason}"
    return list(kubectl.get("events", "-n", ns, "--field-selector", selector)["items"])


def test_a_failed_attempt_stays_for_logs_and_an_eviction_costs_no_restart(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    hold = {"labels": {HOLD_LABEL: "true"}}
    kubectl.apply(_run("flaky", nodes=2, maxRestarts=3, podTemplate=hold), "-n", ns)
    kubectl.wait("--for=condition=Running", "trainingrun/flaky", "-n", ns)
    uid = kubectl.get("trainingrun/flaky", "-n", ns)["metadata"]["uid"]

    # Rank 0 of attempt 0 crashes (kwok fails it with exit code 1).
    crashed = _pods(kubectl, ns, "flaky", 0)[0]["metadata"]["name"]
    annotations = {FAIL_EXIT_CODE: "1", FAIL_REASON: "Error"}
    failing = {"metadata": {"labels": {FAIL_LABEL: "true"}, "annotations": annotations}}
    _patch(kubectl, ns, f"pod/{crashed}", failing)
    _wait_for(kubectl, ns, "flaky", "attempt", 1)
    kubectl.wait("--for=condition=Running", "trainingrun/flaky", "-n", ns)
    status = _status(kubectl, ns, "flaky")
    assert status["restarts"] == 1 and status["lastFailedAttempt"] == 0
    # The crashed pod, its Job and its ConfigMap are still there for `kubectl logs`.
    assert kubectl.get(f"pod/{crashed}", "-n", ns)["status"]["phase"] == "Failed"
    kubectl.get("job/flaky-0", "-n", ns)
    kubectl.get(f"configmap/flaky-0-config-{uid}", "-n", ns)

    # A pod of attempt 1 is evicted (as a node drain does): held terminating by a finalizer,
    # so the test, not a race, decides when it goes.
    evicted = _pods(kubectl, ns, "flaky", 1)[1]["metadata"]["name"]
    _patch(kubectl, ns, f"pod/{evicted}", {"metadata": {"finalizers": [HOLD_FINALIZER]}})
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": evicted, "namespace": ns}}  # fmt: skip
    kubectl.run("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{evicted}/eviction",
                "-f", "-", stdin=json.dumps(eviction))  # fmt: skip
    try:
        _wait_for(kubectl, ns, "flaky", "attempt", 2)
        kubectl.wait("--for=condition=Running", "trainingrun/flaky", "-n", ns)
        status = _status(kubectl, ns, "flaky")
        assert status["restarts"] == 1 and status["disruptions"] == 1
        (event,) = _events(kubectl, ns, "flaky", "Disrupted")
        assert f"pod {evicted} disrupted (EvictionByEvictionAPI)" in event["message"]
        # The disrupted attempt's children go; the crashed attempt's stay for its logs.
        kubectl.wait("--for=delete", "job/flaky-1", f"configmap/flaky-1-config-{uid}", "-n", ns)
        assert kubectl.get(f"pod/{crashed}", "-n", ns)["status"]["phase"] == "Failed"
        assert _status(kubectl, ns, "flaky")["lastFailedAttempt"] == 0
    finally:
        _patch(kubectl, ns, f"pod/{evicted}", {"metadata": {"finalizers": None}})


def test_a_spec_change_rolls_a_new_attempt_and_observed_generation_follows_the_pods(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    kubectl.apply(_run("edited", podTemplate={"labels": {HOLD_LABEL: "true"}}), "-n", ns)
    kubectl.wait("--for=condition=Running", "trainingrun/edited", "-n", ns)
    _wait_for(kubectl, ns, "edited", "observedGeneration", 1)

    _patch(kubectl, ns, "trainingrun/edited", {"spec": {"maxRestarts": 5}})  # lifecycle only
    _wait_for(kubectl, ns, "edited", "observedGeneration", 2)
    assert _status(kubectl, ns, "edited")["attempt"] == 0

    _patch(kubectl, ns, "trainingrun/edited", {"spec": {"image": "example.com/trainer:edited"}})
    _wait_for(kubectl, ns, "edited", "observedGeneration", 3)
    kubectl.wait("--for=condition=Running", "trainingrun/edited", "-n", ns)
    status = _status(kubectl, ns, "edited")
    assert status["attempt"] == 1 and status.get("restarts", 0) == 0
    job = kubectl.get("job/edited-1", "-n", ns)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.com/trainer:edited"
    kubectl.wait("--for=delete", "job/edited-0", "-n", ns)  # its pods ran the old spec
    (event,) = _events(kubectl, ns, "edited", "SpecChanged")
    assert "generation 3" in event["message"] and event["type"] == "Normal"


def test_a_gang_that_cannot_be_placed_times_out_and_meets_its_deadline(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    nowhere = {"nodeSelector": {"tradewind.dev/gpu-pool": "nowhere"}}
    kubectl.apply(_run("unplaced", nodes=2, schedulingTimeoutSeconds=2, maxRestarts=0,
                       podTemplate=nowhere), "-n", ns)  # fmt: skip
    kubectl.apply(_run("late", nodes=2, activeDeadlineSeconds=3, podTemplate=nowhere), "-n", ns)
    for name in ("unplaced", "late"):
        kubectl.wait("--for=condition=Failed", f"trainingrun/{name}", "-n", ns)
    failed = next(c for c in _status(kubectl, ns, "unplaced")["conditions"]
                  if c["type"] == "Failed")  # fmt: skip
    assert failed["reason"] == "MaxRestartsReached"
    assert "0/2 pods of attempt 0 running schedulingTimeoutSeconds=2" in failed["message"]
    late = _status(kubectl, ns, "late")
    assert next(c for c in late["conditions"] if c["type"] == "Failed")["reason"] == (
        "DeadlineExceeded"
    )
    assert late["startTime"]  # from the Job's start: no pod of it ever ran
    kubectl.wait("--for=delete", "job/unplaced-0", "job/late-0", "-n", ns)
