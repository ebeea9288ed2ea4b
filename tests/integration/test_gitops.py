"""The shipped Argo CD health check (deploy/argocd/health.lua, run in Lua through lupa), the
Flux health expressions (deploy/flux/kustomization.yaml) and plain kstatus (what Flux reads
without them) on TrainingRuns, RLRuns and Sweeps whose status the real operator wrote on the
real control plane."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.gitops import argocd_health, flux_health, kstatus
from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import FAIL_EXIT_CODE, FAIL_LABEL, FAIL_REASON, HOLD_LABEL

pytestmark = pytest.mark.integration
LR = "training.optimizer.learningRate"


def _run(name: str, kind: str = "TrainingRun", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


HOLD = {"labels": {HOLD_LABEL: "true"}}


def _fail(code: int, reason: str = "Error") -> dict[str, Any]:
    return {
        "labels": {FAIL_LABEL: "true"},
        "annotations": {FAIL_EXIT_CODE: str(code), FAIL_REASON: reason},
    }


def _sweep(name: str, template: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return _run(
        name,
        "Sweep",
        template={"kind": "TrainingRun", "spec": template},
        objective={"metric": "val_loss", "direction": "minimize"},
        searchSpace={LR: {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        **spec,
    )


def _health(kubectl: Kubectl, ns: str, ref: str) -> tuple[str, str, str, dict[str, Any]]:
    """(Argo CD status, its message, Flux verdict, the object) for the object as it is now."""
    obj: dict[str, Any] = kubectl.get(ref, "-n", ns)
    argocd = argocd_health(obj)
    return argocd["status"], argocd.get("message", ""), flux_health(obj), obj


def _kstatus(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(plain kstatus, Reconciling's status, Stalled's status) of the object."""
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    return (
        kstatus(obj),
        conditions["Reconciling"]["status"],
        conditions["Stalled"]["status"],
    )


def _log_val_loss(stack: DevStack, ns: str, child: str, uid: str, value: float) -> None:
    """What the child's trainer would log to MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tradewind")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("tradewind")
    )
    tags = {"tradewind.name": child, "tradewind.namespace": ns, "tradewind.uid": uid}
    run = client.create_run(experiment_id, tags=tags)
    client.log_metric(run.info.run_id, "val_loss", value, step=1)


def test_runs_health_follows_the_operators_status(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    kubectl.apply(_run("elsewhere", managedBy="kueue.x-k8s.io/multikueue"), "-n", ns)
    kubectl.apply(_run("done"), "-n", ns)
    kubectl.apply(_run("bad-config", podTemplate=_fail(64)), "-n", ns)
    kubectl.apply(_run("running", nodes=2, podTemplate=HOLD), "-n", ns)
    kubectl.apply(_run("paused", podTemplate=HOLD), "-n", ns)
    kubectl.apply(
        _run("unschedulable", podTemplate={"nodeSelector": {"tradewind.dev/gpu-pool": "none"}}),
        "-n",
        ns,
    )
    kubectl.apply(_run("flaky", maxRestarts=100, podTemplate=_fail(1)), "-n", ns)
    rl = _run("rl-done", "RLRun", agents=[{"name": "ppo", "algorithm": "ppo"}])
    kubectl.apply(rl, "-n", ns)

    kubectl.wait("--for=condition=Succeeded", "trainingrun/done", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/done")
    assert (argocd, flux) == ("Healthy", "Current"), obj["status"]
    assert message.startswith("Succeeded: attempt 0 completed")
    assert _kstatus(obj) == ("Current", "False", "False"), obj["status"]

    kubectl.wait("--for=condition=Failed", "trainingrun/bad-config", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/bad-config")
    assert (argocd, flux) == ("Degraded", "Failed"), obj["status"]
    assert "exit code 64" in message and "not retried" in message
    assert _kstatus(obj) == ("Failed", "False", "True"), obj["status"]
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    stalled, failed = conditions["Stalled"], conditions["Failed"]
    assert (stalled["reason"], stalled["message"]) == ("InvalidConfig", failed["message"])

    kubectl.wait("--for=condition=Running", "trainingrun/running", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/running")
    assert (argocd, flux) == ("Progressing", "Current"), obj["status"]
    assert message == "Running: 2/2 pods running (attempt 0)"
    assert _kstatus(obj) == ("InProgress", "True", "False"), obj["status"]
    reconciling = next(c for c in obj["status"]["conditions"] if c["type"] == "Reconciling")
    assert (reconciling["reason"], reconciling["message"]) == (
        "Running",
        message.removeprefix("Running: "),
    )

    kubectl.wait("--for=condition=Running", "trainingrun/paused", "-n", ns)
    patch = json.dumps({"spec": {"suspend": True}})
    kubectl.run("patch", "trainingrun/paused", "-n", ns, "--type=merge", "-p", patch)
    kubectl.wait("--for=condition=Suspended", "trainingrun/paused", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/paused")
    assert (argocd, flux) == ("Suspended", "Current"), obj["status"]
    assert "spec.suspend is true" in message
    # Neither Reconciling nor Stalled: kstatus goes by Ready (False), so it waits.
    assert _kstatus(obj) == ("InProgress", "False", "False"), obj["status"]

    kubectl.wait("--for=jsonpath={.status.phase}=Pending", "trainingrun/unschedulable", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/unschedulable")
    assert (argocd, flux) == ("Progressing", "InProgress"), obj["status"]
    assert message.startswith("Pending: ")
    assert _kstatus(obj) == ("InProgress", "True", "False"), obj["status"]

    # Once restarted, a run whose pods keep failing stays Restarting (each new attempt fails).
    kubectl.wait("--for=jsonpath={.status.phase}=Restarting", "trainingrun/flaky", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/flaky")
    assert (argocd, flux) == ("Progressing", "InProgress"), obj["status"]
    assert "from the latest checkpoint" in message
    assert _kstatus(obj) == ("InProgress", "True", "False"), obj["status"]
    kubectl.run("delete", "trainingrun/flaky", "-n", ns, "--wait=false")

    kubectl.wait("--for=condition=Succeeded", "rlrun/rl-done", "-n", ns, timeout=120)
    argocd, _, flux, obj = _health(kubectl, ns, "rlrun/rl-done")
    assert (argocd, flux) == ("Healthy", "Current"), obj["status"]
    assert _kstatus(obj) == ("Current", "False", "False"), obj["status"]

    # Left to another controller: no status from this operator, so still progressing.
    argocd, message, flux, obj = _health(kubectl, ns, "trainingrun/elsewhere")
    assert "status" not in obj
    assert (argocd, flux) == ("Progressing", "InProgress")
    assert "Waiting for the Tradewind operator" in message
    assert kstatus(obj) == "Current"  # kstatus has nothing to go by (docs/gitops.md)


def test_a_spec_change_is_progressing_until_the_operator_acts_on_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """The real object of a succeeded run, seen as it is the moment a change to its spec
    lands (generation moved on, status not yet): neither tool calls it Healthy/Current."""
    kubectl.apply(_run("edited"), "-n", namespace)
    kubectl.wait("--for=condition=Succeeded", "trainingrun/edited", "-n", namespace)
    obj = kubectl.get("trainingrun/edited", "-n", namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert argocd_health(obj)["status"] == "Healthy" and kstatus(obj) == "Current"
    obj["metadata"]["generation"] += 1
    assert argocd_health(obj)["status"] == "Progressing"
    assert flux_health(obj) == "InProgress"
    assert kstatus(obj) == "InProgress"


def test_sweeps_health_follows_the_operators_status(
    kubectl: Kubectl, operator: OperatorProcess, stack: DevStack, namespace: str
) -> None:
    ns = namespace
    invalid = _sweep("typo", {"training": {"epochs": 1}})
    invalid["spec"]["searchSpace"] = {
        "training.learningRat": {"type": "uniform", "low": 0, "high": 1}
    }
    kubectl.apply(invalid, "-n", ns)
    held = {"training": {"epochs": 1}, "podTemplate": HOLD}
    kubectl.apply(_sweep("searching", held, maxTrials=2, parallelism=1), "-n", ns)
    kubectl.apply(_sweep("found", held, maxTrials=1, parallelism=1), "-n", ns)

    kubectl.wait("--for=condition=Failed", "sweep/typo", "-n", ns)
    argocd, message, flux, obj = _health(kubectl, ns, "sweep/typo")
    assert (argocd, flux) == ("Degraded", "Failed"), obj["status"]
    assert "learningRat" in message
    assert _kstatus(obj) == ("Failed", "False", "True"), obj["status"]

    kubectl.wait("--for=create", "trainingrun/searching-0", "-n", ns)
    kubectl.wait("--for=jsonpath={.status.phase}=Running", "sweep/searching", "-n", ns)
    argocd, _, flux, obj = _health(kubectl, ns, "sweep/searching")
    assert (argocd, flux) == ("Progressing", "Current"), obj["status"]
    assert _kstatus(obj) == ("InProgress", "True", "False"), obj["status"]

    kubectl.wait("--for=create", "trainingrun/found-0", "-n", ns)
    uid = kubectl.get("trainingrun/found-0", "-n", ns)["metadata"]["uid"]
    _log_val_loss(stack, ns, "found-0", uid, 0.42)
    kubectl.wait("--for=condition=Running", "trainingrun/found-0", "-n", ns)
    kubectl.run("label", "pods", "-n", ns, "-l", "tradewind.dev/run=found-0", f"{HOLD_LABEL}-")
    kubectl.wait("--for=condition=Succeeded", "sweep/found", "-n", ns, timeout=120)
    argocd, _, flux, obj = _health(kubectl, ns, "sweep/found")
    assert (argocd, flux) == ("Healthy", "Current"), obj["status"]
    assert obj["status"]["bestValue"] == 0.42
    assert _kstatus(obj) == ("Current", "False", "False"), obj["status"]
