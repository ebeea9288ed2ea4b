"""The Sweep reconcile against a real Optuna storage (SQLite in a temporary folder) and a fake
apiserver that keeps child runs in a dict: children, pruning, telling, budgets, restarts."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from kubernetes.client.exceptions import ApiException
from optuna.trial import TrialState

from tradewind.api.identity import PARENT_RUN_ANNOTATION
from tradewind.api.status import SweepStatus, TrialCounts
from tradewind.api.sweep import SweepSpec
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.sweep_reconcile import TrialMetrics, reconcile_sweep, storage
from tradewind.operator.sweep_status import (
    SWEEP_LABEL,
    TRIAL_LABEL,
    Outcome,
    Tally,
    apply_outcome,
    observe_child,
    outcome,
    study_name,
    trials_to_start,
)
from tradewind.significance import sharpe_stats

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LR = "training.optimizer.learningRate"


class FakeCustom:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.status: dict[str, Any] | None = None

    def list_namespaced_custom_object(self, *args: Any, label_selector: str) -> dict[str, Any]:
        key, value = label_selector.split("=")
        items = [o for o in self.objects.values() if o["metadata"]["labels"].get(key) == value]
        return {"items": copy.deepcopy(items)}

    def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: Any, **_: Any
    ) -> None:
        name = body["metadata"]["name"]
        if name in self.objects:
            raise ApiException(status=409)
        self.objects[name] = copy.deepcopy(body)
        self.objects[name]["metadata"]["uid"] = f"uid-{name}"  # as the apiserver does
        self.created.append(name)

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        if args[-1] not in self.objects:
            raise ApiException(status=404)
        return copy.deepcopy(self.objects[args[-1]])

    def patch_namespaced_custom_object_status(self, *args: Any) -> None:
        self.status = args[-1]["status"]


class FakeKube:
    def __init__(self) -> None:
        self.custom = FakeCustom()
        self.deleted: list[str] = []
        self.events: list[tuple[str, str, str]] = []

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.deleted.append(name)
        self.custom.objects.pop(name, None)

    def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    def finish(self, name: str, phase: str, **metrics: float) -> None:
        child = self.custom.objects[name]
        child["status"] = {"phase": phase, "metrics": metrics}
        if phase == "Failed":
            child["status"]["conditions"] = [
                {"type": "Failed", "status": "True", "reason": "OOMKilled", "message": "boom"}
            ]

    def start(self, name: str) -> None:
        self.custom.objects[name]["status"] = {"phase": "Running"}

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


class FakeMetrics(TrialMetrics):
    """MLflow as a dict: child name -> {metric: {step: value}}."""

    def __init__(self) -> None:
        super().__init__("http://mlflow")
        self.runs: dict[str, dict[str, dict[int, float]]] = {}
        self.older: dict[str, list[dict[str, float]]] = {}  # earlier runs of a child
        self.sweep_runs = 0
        self.finished: list[tuple[str, bool, dict[str, float]]] = []

    def sweep_run(self, experiment: str, name: str, namespace: str, study: str) -> dict[str, Any]:
        self.sweep_runs += 1
        return {"run_id": "parent-1", "experiment_id": "7"}

    def finish_sweep_run(self, run_id: str, failed: bool, metrics: dict[str, float]) -> None:
        self.finished.append((run_id, failed, metrics))

    def latest(self, experiment: str, name: str, namespace: str, uid: str) -> dict[str, Any] | None:
        if name not in self.runs or uid != f"uid-{name}":  # found by the child's uid too
            return None
        last = [{"key": k, "value": h[max(h)]} for k, h in self.runs[name].items() if h]
        return {"info": {"run_id": name}, "data": {"metrics": last}}

    def history(self, run_id: str, key: str) -> dict[int, float]:
        return dict(self.runs.get(run_id, {}).get(key, {}))

    def final_metrics(
        self, experiment: str, name: str, namespace: str, uid: str
    ) -> dict[str, float]:
        merged: dict[str, float] = {}
        if uid != f"uid-{name}":
            return merged
        for earlier in self.older.get(name, []):
            merged |= earlier
        return merged | {k: h[max(h)] for k, h in self.runs.get(name, {}).items() if h}


def _body(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "template": {"kind": "TrainingRun", "spec": {"training": {"epochs": 4}}},
        "objective": {"metric": "val_loss"},
        "searchSpace": {LR: {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "maxTrials": 4,
        "parallelism": 2,
    }
    doc.update(spec)
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "sw", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": doc,
    }


class Harness:
    def __init__(self, tmp_path: Path, body: dict[str, Any]) -> None:
        self.body, self.kube, self.metrics = body, FakeKube(), FakeMetrics()
        self.settings = OperatorSettings(optuna_storage=f"sqlite:///{tmp_path}/optuna.db")
        self.last: SweepStatus | None = None
        self.now = NOW

    def reconcile(self, restart: bool = False) -> SweepStatus:
        """One reconcile; `restart` forgets what this operator wrote (a new process)."""
        if restart:
            self.last = None
            self.body["status"] = self.kube.custom.status or {}
        self.last = reconcile_sweep(
            self.body,
            self.kube,
            self.settings,
            self.metrics,
            self.last,
            self.now,  # type: ignore[arg-type]
        )
        return self.last

    def study(self) -> optuna.Study:
        return optuna.load_study(
            study_name=study_name("ns", "sw", "u-1"), storage=storage(self.settings.optuna_storage)
        )

    def children(self) -> list[str]:
        return sorted(self.kube.custom.objects)

    def child(self, name: str) -> dict[str, Any]:
        return self.kube.custom.objects[name]


def test_starts_parallelism_children_with_their_parameters_and_no_more(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    status = h.reconcile()
    assert h.children() == ["sw-0", "sw-1"]
    trials = h.study().trials
    for trial in trials:
        child = h.child(f"sw-{trial.number}")
        assert child["spec"]["training"]["optimizer"]["learningRate"] == trial.params[LR]
        assert child["spec"]["training"]["epochs"] == 4
        labels = child["metadata"]["labels"]
        assert labels[SWEEP_LABEL] == "sw" and labels[TRIAL_LABEL] == str(trial.number)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == "u-1" and owner["controller"] is True
    assert status.phase == "Running" and status.trials == TrialCounts(pending=2)
    h.kube.start("sw-0")
    status = h.reconcile()
    assert status.trials == TrialCounts(pending=1, running=1)
    assert h.kube.custom.created == ["sw-0", "sw-1"] and len(h.study().trials) == 2
    assert (
        h.kube.reasons().count("TrialCreated") == 2 and h.kube.reasons().count("TrialsRunning") == 1
    )


def test_finished_children_are_told_and_replaced_until_max_trials(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.reconcile()
    losses = {0: 0.5, 1: 0.3, 2: 0.4, 3: 0.6}
    for done in range(4):
        h.metrics.runs[f"sw-{done}"] = {"val_loss": {1: 0.9, 2: losses[done]}}
        h.kube.finish(f"sw-{done}", "Succeeded")
        status = h.reconcile()
        running = [c for c in h.children() if "status" not in h.child(c)]
        assert len(running) <= 2
    assert h.children() == ["sw-0", "sw-1", "sw-2", "sw-3"]
    assert status.phase == "Succeeded" and status.trials == TrialCounts(completed=4)
    assert status.best_trial is not None and status.best_trial.name == "sw-1"
    assert status.best_value == 0.3 and status.best_trial.values == [0.3]
    best = h.study().trials[1]
    assert status.best_trial.params == {LR: best.params[LR]}
    succeeded = next(c for c in status.conditions if c.type == "Succeeded")
    assert succeeded.status == "True" and succeeded.reason == "MaxTrialsReached"
    assert status.completion_time == NOW
    assert h.kube.custom.status is not None and h.kube.custom.status["bestValue"] == 0.3
    # The sweep's MLflow run: made once, the trials' runs nest under it, ended with the result.
    assert status.mlflow.run_id == "parent-1" and h.metrics.sweep_runs == 1
    assert status.mlflow.url == "http://mlflow/#/experiments/7/runs/parent-1"
    child = h.child("sw-2")  # what the trainer tags its MLflow run with (api/identity.py)
    assert "tags" not in child["spec"].get("tracking", {})
    assert child["metadata"]["labels"].items() >= {SWEEP_LABEL: "sw", TRIAL_LABEL: "2"}.items()
    assert child["metadata"]["annotations"][PARENT_RUN_ANNOTATION] == "parent-1"
    assert h.metrics.finished == [
        ("parent-1", False, {"trials_completed": 4, "trials_pruned": 0, "trials_failed": 0,
                             "best_val_loss": 0.3, "best_trial": 1})
    ]  # fmt: skip
    h.reconcile()
    assert len(h.metrics.finished) == 1


def test_a_finished_sweep_stays_finished_when_max_trials_is_raised(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(maxTrials=1, parallelism=1))
    h.reconcile()
    h.kube.finish("sw-0", "Succeeded", val_loss=0.25)
    assert h.reconcile().phase == "Succeeded"
    h.body["spec"]["maxTrials"] = 3
    h.body["metadata"]["generation"] = 2
    status = h.reconcile()
    assert status.phase == "Succeeded" and status.completion_time == NOW
    assert h.children() == ["sw-0"] and len(h.study().trials) == 1


def test_the_pruner_stops_a_worse_trial_and_its_child_is_deleted(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(pruner={"type": "median", "startupTrials": 1}))
    h.reconcile()
    h.metrics.runs["sw-0"] = {"val_loss": {1: 0.5, 2: 0.4}}
    h.kube.finish("sw-0", "Succeeded")
    h.kube.start("sw-1")
    # Logged at its timestep (as an RLRun does): the pruner counts evaluations, from 1.
    h.metrics.runs["sw-1"] = {"val_loss": {5000: 0.45}}  # better than trial 0 at step 1
    h.reconcile()
    assert "sw-1" in h.children() and h.study().trials[1].intermediate_values == {1: 0.45}
    h.metrics.runs["sw-1"]["val_loss"][10000] = 0.9  # worse at step 2
    status = h.reconcile()
    assert "sw-1" not in h.children() and h.kube.deleted == ["sw-1"]
    assert h.study().trials[1].state == TrialState.PRUNED
    assert status.trials.pruned == 1 and status.trials.completed == 1
    assert any("sw-1 pruned at step 2 (val_loss=0.9)" in m for _, _, m in h.kube.events)
    assert h.children() == ["sw-0", "sw-2", "sw-3"]  # two slots refilled: 1 pruned, 0 done


def test_a_restart_recreates_a_lost_child_and_duplicates_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.reconcile()
    lost = h.kube.custom.objects.pop("sw-1")  # asked, then killed before the child existed
    h.reconcile(restart=True)
    assert h.children() == ["sw-0", "sw-1"] and len(h.study().trials) == 2
    assert h.child("sw-1")["spec"] == lost["spec"]
    h.reconcile(restart=True)
    assert h.kube.custom.created == ["sw-0", "sw-1", "sw-1"] and len(h.study().trials) == 2


def test_a_child_of_a_finished_trial_is_deleted_and_not_replaced_twice(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.reconcile()
    h.study().tell(1, state=TrialState.PRUNED)  # pruned, then killed before the delete
    h.reconcile(restart=True)
    assert h.kube.deleted == ["sw-1"] and h.children() == ["sw-0", "sw-2"]


def test_a_name_taken_by_another_run_fails_the_trial_instead_of_blocking(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.kube.custom.objects["sw-1"] = {"metadata": {"name": "sw-1", "labels": {}}, "spec": {}}
    h.reconcile()
    status = h.reconcile()
    assert h.children() == ["sw-0", "sw-1", "sw-2"] and h.child("sw-1")["spec"] == {}
    trial = h.study().trials[1]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["tradewind.reason"] == "TrainingRun sw-1 exists and is not this Sweep's"
    assert status.trials.failed == 1 and status.phase == "Running"


def test_more_failures_than_allowed_fail_the_sweep_and_stop_its_trials(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(maxFailedTrials=0))
    h.reconcile()
    h.kube.finish("sw-0", "Failed")
    status = h.reconcile()
    assert status.phase == "Failed"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "MaxFailedTrials" and "maxFailedTrials=0" in failed.message
    assert "1 running trial(s) stopped" in failed.message
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason, stalled.message) == (
        "True",
        failed.reason,
        failed.message,
    )
    assert h.kube.deleted == ["sw-1"] and h.children() == ["sw-0"]
    reason = h.study().trials[0].user_attrs["tradewind.reason"]
    assert "sw-0 failed: OOMKilled: boom" in reason
    h.reconcile()
    assert h.children() == ["sw-0"] and len(h.study().trials) == 2
    assert h.kube.reasons().count("MaxFailedTrials") == 1


def test_a_succeeded_child_without_the_objective_metric_fails_its_trial(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.reconcile()
    h.metrics.runs["sw-0"] = {"train_loss": {1: 0.2}}
    h.kube.finish("sw-0", "Succeeded")
    status = h.reconcile()
    assert h.study().trials[0].state == TrialState.FAIL
    assert status.trials.failed == 1 and "TrialFailed" in h.kube.reasons()


def test_the_childs_status_metrics_are_used_when_mlflow_has_no_run(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    h.reconcile()
    h.kube.finish("sw-0", "Succeeded", val_loss=0.25)
    status = h.reconcile()
    assert status.best_value == 0.25


def test_after_the_timeout_no_trial_starts_and_the_sweep_succeeds(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(timeoutSeconds=60))
    h.reconcile()
    h.now = NOW + dt.timedelta(minutes=5)
    h.kube.finish("sw-0", "Succeeded", val_loss=0.25)
    status = h.reconcile()
    assert h.children() == ["sw-0", "sw-1"] and status.phase == "Running"
    h.kube.finish("sw-1", "Succeeded", val_loss=0.35)
    status = h.reconcile()
    assert status.phase == "Succeeded" and status.trials.completed == 2
    assert next(c for c in status.conditions if c.type == "Succeeded").reason == "TimeoutReached"


def test_a_multi_objective_sweep_reports_the_pareto_front(tmp_path: Path) -> None:
    objectives = [
        {"metric": "val_loss", "direction": "minimize"},
        {"metric": "sharpe", "direction": "maximize"},
    ]
    h = Harness(tmp_path, _body(objective=None, objectives=objectives, maxTrials=3))
    del h.body["spec"]["objective"]
    values = {0: (0.5, 1.0), 1: (0.3, 0.5), 2: (0.6, 0.2)}  # trial 2 is dominated by 0
    for n in range(3):
        h.reconcile()
        loss, sharpe = values[n]
        h.kube.finish(f"sw-{n}", "Succeeded", val_loss=loss, sharpe=sharpe)
    status = h.reconcile()
    assert status.phase == "Succeeded" and status.best_trial is None
    assert [t.name for t in status.pareto_front] == ["sw-0", "sw-1"]
    assert status.pareto_front[0].values == [0.5, 1.0]


def test_an_invalid_sweep_fails_naming_the_field_and_creates_nothing(tmp_path: Path) -> None:
    h = Harness(
        tmp_path, _body(searchSpace={"training.nope": {"type": "uniform", "low": 0, "high": 1}})
    )
    status = h.reconcile()
    assert status.phase == "Failed" and h.children() == []
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "InvalidSpec" and "spec.searchSpace[training.nope]" in failed.message
    assert "'nope' is not a field" in failed.message
    assert not (tmp_path / "optuna.db").exists()


def test_trials_to_start_and_outcome() -> None:
    spec = SweepSpec.model_validate(_body(maxTrials=5, parallelism=3)["spec"])
    tally = Tally(budget=5, launched=4, running=1, failed=0, max_failed=3)
    assert trials_to_start(spec, tally) == 1  # budget
    assert trials_to_start(spec, Tally(5, 2, 1, 0, 3)) == 2  # parallelism
    assert trials_to_start(spec, Tally(5, 2, 1, 4, 3)) == 0  # failures
    assert trials_to_start(spec, Tally(5, 2, 1, 0, 3, timed_out=True)) == 0
    done = outcome(Tally(5, 5, 0, 5, 3), TrialCounts(failed=5))
    assert (done.phase, done.reason) == ("Failed", "MaxFailedTrials")
    nothing = outcome(Tally(2, 2, 0, 2, 3), TrialCounts(failed=1, pruned=1))
    assert (nothing.phase, nothing.reason) == ("Failed", "NoTrialCompleted")


@pytest.mark.parametrize(
    ("owner_uid", "trial", "expected"),
    [("u-1", "3", 3), ("other", "3", None), ("u-1", "x", None)],
)
def test_only_children_owned_by_the_sweep_with_a_trial_number_count(
    owner_uid: str, trial: str, expected: int | None
) -> None:
    body = {
        "metadata": {
            "name": "sw-3",
            "labels": {TRIAL_LABEL: trial},
            "ownerReferences": [{"uid": owner_uid, "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    child = observe_child(body, "u-1")
    assert (child.number if child else None) == expected


def test_a_trial_is_told_metrics_from_all_of_its_childs_runs(tmp_path: Path) -> None:
    """An RLRun ensemble logs its agents' evaluations and its combine step in runs of their
    own: the objective may be in an earlier run than the latest."""
    h = Harness(
        tmp_path,
        _body(
            maxTrials=1, parallelism=1, objective={"metric": "eval_sharpe", "direction": "maximize"}
        ),
    )
    h.reconcile()
    h.metrics.older["sw-0"] = [{"eval_sharpe": 0.8}]
    h.metrics.runs["sw-0"] = {"ensemble_sharpe": {1: 1.1}}
    h.kube.finish("sw-0", "Succeeded")
    status = h.reconcile()
    assert status.trials == TrialCounts(completed=1)
    assert status.best_value == 0.8


@pytest.mark.parametrize(
    ("phase", "reconciling", "stalled"),
    [
        ("Pending", "True", "False"),
        ("Running", "True", "False"),
        ("Succeeded", "False", "False"),
        ("Failed", "False", "True"),
    ],
)
def test_each_sweep_phase_sets_the_kstatus_conditions(
    phase: str, reconciling: str, stalled: str
) -> None:
    status = SweepStatus()
    apply_outcome(status, Outcome(phase, "Why", f"{phase} because"), NOW, 1)
    conditions = {c.type: (c.status, c.reason, c.message) for c in status.conditions}
    assert conditions["Reconciling"] == (reconciling, phase, f"{phase} because")
    assert conditions["Stalled"] == (
        stalled,
        "Why" if stalled == "True" else phase,
        f"{phase} because",
    )
    assert conditions["Ready"][0] == str(phase in ("Running", "Succeeded"))
    if phase != "Pending":
        assert conditions[phase] == ("True", "Why", f"{phase} because")


def test_a_sweep_reconciled_with_nothing_new_writes_no_status(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body())
    status = h.reconcile()
    assert status.phase == "Running" and h.kube.custom.status is not None
    reconciling = next(c for c in status.conditions if c.type == "Reconciling")
    assert (reconciling.status, reconciling.reason) == ("True", "Running")
    h.kube.custom.status = None
    h.now = NOW + dt.timedelta(minutes=1)
    assert h.reconcile() == status and h.kube.custom.status is None
    h.kube.finish("sw-0", "Succeeded", val_loss=0.25)
    h.kube.finish("sw-1", "Succeeded", val_loss=0.35)
    h.reconcile()
    h.kube.finish("sw-2", "Succeeded", val_loss=0.3)
    h.kube.finish("sw-3", "Succeeded", val_loss=0.4)
    done = h.reconcile()
    assert done.phase == "Succeeded"
    conditions = {c.type: c for c in done.conditions}
    assert conditions["Reconciling"].status == "False"
    assert conditions["Reconciling"].last_transition_time == h.now
    assert conditions["Stalled"].status == "False"
    assert conditions["Stalled"].last_transition_time == NOW


def _backtest(seed: int) -> dict[str, float]:
    """A child's final Sharpe metrics: a year of daily returns of a modest strategy."""
    returns = np.random.default_rng(seed).normal(0.001, 0.01, 252)
    return sharpe_stats(returns, 252.0, n_boot=200, seed=seed).as_metrics("backtest")


def test_the_best_trials_deflated_sharpe_is_in_the_status_and_mlflow(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(maxTrials=4))
    h.reconcile()
    for n in range(4):
        h.metrics.runs[f"sw-{n}"] = {
            k: {1: v} for k, v in ({"val_loss": 0.5 - 0.1 * n} | _backtest(n)).items()
        }
        h.kube.finish(f"sw-{n}", "Succeeded")
        status = h.reconcile()
    assert status.phase == "Succeeded" and status.best_trial is not None
    sharpe = status.best_trial.sharpe
    assert sharpe is not None and sharpe.trials == 4
    assert sharpe.value == pytest.approx(_backtest(3)["backtest_sharpe"])
    assert sharpe.deflated < sharpe.psr
    written = h.kube.custom.status
    assert written is not None and written["bestTrial"]["sharpe"]["deflated"] == sharpe.deflated
    ((_, _, metrics),) = h.metrics.finished
    assert metrics["best_deflated_sharpe"] == sharpe.deflated
    assert metrics["best_sharpe"] == sharpe.value and metrics["best_psr"] == sharpe.psr
    assert metrics["sharpe_trials"] == 4


def test_a_best_trial_without_sharpe_metrics_has_no_significance(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(maxTrials=1, parallelism=1))
    h.reconcile()
    h.kube.finish("sw-0", "Succeeded", val_loss=0.25, backtest_sharpe=1.0)
    status = h.reconcile()
    assert status.phase == "Succeeded" and status.best_trial is not None
    assert status.best_trial.sharpe is None
    ((_, _, metrics),) = h.metrics.finished
    assert "best_deflated_sharpe" not in metrics
