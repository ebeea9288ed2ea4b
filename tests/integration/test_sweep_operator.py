"""In-cluster Sweeps against the real control plane: the operator runs the study, creates the
child TrainingRuns (kwok runs their pods), prunes from the MLflow history the test logs in
place of the trainer, survives a SIGKILL mid-sweep, and rejects an invalid Sweep."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.api.identity import PARENT_RUN_ANNOTATION
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL
from tradewind.operator.sweep_status import SWEEP_LABEL, TRIAL_LABEL, study_name

pytestmark = pytest.mark.integration
LR = "training.optimizer.learningRate"


@pytest.fixture(scope="module")
def mlflow(stack: DevStack) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])


def _sweep(name: str, **spec: Any) -> dict[str, Any]:
    template = {"training": {"epochs": 3}, "podTemplate": {"labels": {HOLD_LABEL: "true"}}}
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": template},
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {LR: {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            "sampler": "random",
            **spec,
        },
    }


def _log_val_loss(
    mlflow: Any, namespace: str, child: str, uid: str, values: dict[int, float]
) -> None:
    """What the trainer of `child` (uid `uid`) would log: val_loss per epoch, in its tagged
    MLflow run."""
    experiment = mlflow.get_experiment_by_name("tradewind")
    experiment_id = (
        experiment.experiment_id if experiment else mlflow.create_experiment("tradewind")
    )
    tags = {"tradewind.name": child, "tradewind.namespace": namespace, "tradewind.uid": uid}
    run = mlflow.create_run(experiment_id, tags=tags)
    for step, value in values.items():
        mlflow.log_metric(run.info.run_id, "val_loss", value, step=step)


def _children(kubectl: Kubectl, ns: str, sweep: str) -> list[dict[str, Any]]:
    items = kubectl.get("trainingruns", "-n", ns, "-l", f"{SWEEP_LABEL}={sweep}")["items"]
    return list(items)


def _active(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for c in children
        if not c["metadata"].get("deletionTimestamp")
        and (c.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


def _release(kubectl: Kubectl, ns: str, child: str) -> bool:
    """Let the held pods of `child` complete; False while it has no pods yet."""
    selector = f"tradewind.dev/run={child}"
    if not kubectl.get("pods", "-n", ns, "-l", selector)["items"]:
        return False
    kubectl.run("label", "pods", "-n", ns, "-l", selector, f"{HOLD_LABEL}-")
    return True


def _sweep_status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl.get(f"sweep/{name}", "-n", ns).get("status") or {})


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def _study(operator: OperatorProcess, kubectl: Kubectl, ns: str, name: str) -> Any:
    import optuna

    uid = kubectl.get(f"sweep/{name}", "-n", ns)["metadata"]["uid"]
    return optuna.load_study(study_name=study_name(ns, name, uid), storage=operator.storage)


def _drive(
    kubectl: Kubectl,
    mlflow: Any,
    ns: str,
    name: str,
    curve: dict[int, dict[int, float]],
    release: set[int],
    parallelism: int,
) -> dict[int, float]:
    """Play the trainer of each child as it appears: log its val_loss curve, and let the
    children in `release` finish (the others stay running until pruned). Returns each trial's
    learning rate as its child's spec has it, until the sweep is finished."""
    params: dict[int, float] = {}
    released: set[int] = set()
    deadline = time.monotonic() + 300
    while _sweep_status(kubectl, ns, name).get("phase") not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, _sweep_status(kubectl, ns, name)
        children = _children(kubectl, ns, name)
        active = _active(children)
        assert len(active) <= parallelism, [
            (c["metadata"]["name"], (c.get("status") or {}).get("phase")) for c in active
        ]
        for child in children:
            number = int(child["metadata"]["labels"][TRIAL_LABEL])
            child_name = child["metadata"]["name"]
            if number not in params:
                params[number] = child["spec"]["training"]["optimizer"]["learningRate"]
                uid = child["metadata"]["uid"]
                _log_val_loss(mlflow, ns, child_name, uid, curve[number])
            if number in release and number not in released and _release(kubectl, ns, child_name):
                released.add(number)
        time.sleep(0.5)
    return params


def test_a_sweep_runs_children_prunes_the_worse_and_reports_the_best(
    kubectl: Kubectl, operator: OperatorProcess, mlflow: Any, namespace: str
) -> None:
    sweep = _sweep(
        "search",
        maxTrials=6,
        parallelism=2,
        pruner={"type": "median", "startupTrials": 1},
    )
    kubectl.apply(sweep, "-n", namespace)
    good, bad = {0, 3, 5}, {1, 2, 4}
    # Good trials learn (and the later the better); bad ones are far worse at epoch 1, and
    # are held running until the pruner stops them.
    curve = {n: {1: 0.6, 2: 0.5, 3: 0.5 - 0.01 * n} for n in good} | {n: {1: 2.0} for n in bad}
    params = _drive(kubectl, mlflow, namespace, "search", curve, release=good, parallelism=2)

    status = _sweep_status(kubectl, namespace, "search")
    assert status["phase"] == "Succeeded", status
    assert status["trials"] == {
        "pending": 0,
        "running": 0,
        "completed": 3,
        "pruned": 3,
        "failed": 0,
    }
    assert status["bestTrial"]["name"] == "search-5" and status["bestTrial"]["number"] == 5
    assert status["bestValue"] == pytest.approx(0.45)
    assert status["bestTrial"]["params"] == {LR: params[5]}
    assert _condition(status, "Succeeded")["reason"] == "MaxTrialsReached"
    assert _condition(status, "Ready")["status"] == "True"

    sweep_run = mlflow.get_run(status["mlflow"]["runId"])  # the trials' runs nest under it
    assert sweep_run.data.tags["tradewind.kind"] == "Sweep" and sweep_run.info.status == "FINISHED"
    assert sweep_run.data.metrics["best_val_loss"] == pytest.approx(0.45)
    child = kubectl.get("trainingrun/search-5", "-n", namespace)
    assert child["metadata"]["annotations"][PARENT_RUN_ANNOTATION] == sweep_run.info.run_id

    study = _study(operator, kubectl, namespace, "search")
    from optuna.trial import TrialState

    states = {t.number: t.state for t in study.trials}
    assert states == {n: TrialState.COMPLETE for n in good} | {n: TrialState.PRUNED for n in bad}
    for trial in study.trials:  # each child ran with its trial's parameters
        assert params[trial.number] == trial.params[LR]
    kubectl.wait(
        "--for=delete", *(f"trainingrun/search-{n}" for n in bad), "-n", namespace, timeout=60
    )
    left = sorted(c["metadata"]["name"] for c in _children(kubectl, namespace, "search"))
    assert left == ["search-0", "search-3", "search-5"]
    events = kubectl.get(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=search"
    )["items"]
    assert sum(e["reason"] == "TrialPruned" for e in events) == 3
    printed = kubectl.run("get", "sweep/search", "-n", namespace).stdout.splitlines()
    assert printed[1].split()[1:4] == ["Succeeded", "3", "0"]  # phase, completed, running
    assert "0.45" in printed[1]


def test_an_operator_killed_mid_sweep_loses_and_duplicates_no_trial(
    kubectl: Kubectl, operator: OperatorProcess, mlflow: Any, namespace: str
) -> None:
    from tradewind.api.sweep import SweepSpec
    from tradewind.sweeps import study as sw

    sweep = _sweep("restart", maxTrials=4, parallelism=2)
    kubectl.apply(sweep, "-n", namespace)
    for n in (0, 1):
        kubectl.wait("--for=create", f"trainingrun/restart-{n}", "-n", namespace)
        kubectl.wait("--for=condition=Running", f"trainingrun/restart-{n}", "-n", namespace)
    uids = {
        c["metadata"]["name"]: c["metadata"]["uid"]
        for c in _children(kubectl, namespace, "restart")
    }
    assert sorted(uids) == ["restart-0", "restart-1"]

    operator.kill()
    # The window a kill can hit: the study has asked trial 2, its child does not exist yet.
    spec = SweepSpec.model_validate(sweep["spec"])
    study = _study(operator, kubectl, namespace, "restart")
    trial, asked = sw.ask(sw.create_or_load(spec, study.study_name, operator.storage), spec)
    assert trial.number == 2
    operator.start()

    kubectl.wait("--for=create", "trainingrun/restart-2", "-n", namespace)
    child = kubectl.get("trainingrun/restart-2", "-n", namespace)
    assert child["spec"]["training"]["optimizer"]["learningRate"] == asked[LR]
    assert child["metadata"]["labels"][TRIAL_LABEL] == "2"

    curve = {n: {1: 0.7, 2: 0.6 - 0.01 * n} for n in range(4)}
    # Three trials run at once here (the one asked before the kill, beyond parallelism 2).
    params = _drive(
        kubectl, mlflow, namespace, "restart", curve, release={0, 1, 2, 3}, parallelism=3
    )

    status = _sweep_status(kubectl, namespace, "restart")
    assert status["phase"] == "Succeeded" and status["trials"]["completed"] == 4, status
    assert status["bestTrial"]["name"] == "restart-3"
    study = _study(operator, kubectl, namespace, "restart")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    children = _children(kubectl, namespace, "restart")
    names = sorted(c["metadata"]["name"] for c in children)
    assert names == ["restart-0", "restart-1", "restart-2", "restart-3"]
    for c in children:  # the children from before the kill are the same objects
        name = c["metadata"]["name"]
        assert uids.get(name, c["metadata"]["uid"]) == c["metadata"]["uid"]
        assert params[int(c["metadata"]["labels"][TRIAL_LABEL])] == next(
            t.params[LR] for t in study.trials if t.number == int(name.rsplit("-", 1)[1])
        )


def test_an_invalid_sweep_fails_naming_the_field_and_creates_no_run(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    sweep = _sweep("typo")
    sweep["spec"]["searchSpace"] = {
        "training.learningRat": {"type": "uniform", "low": 0, "high": 1}
    }
    kubectl.apply(sweep, "-n", namespace)  # the template is free-form in the CRD
    kubectl.wait("--for=condition=Failed", "sweep/typo", "-n", namespace)
    failed = _condition(_sweep_status(kubectl, namespace, "typo"), "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.searchSpace[training.learningRat]" in failed["message"]
    assert "'learningRat' is not a field" in failed["message"]
    assert kubectl.get("trainingruns", "-n", namespace)["items"] == []
