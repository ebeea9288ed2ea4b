"""`tradewind run -f` on a Sweep: real trial processes of a tiny TrainingRun, pruned by
successive halving, nested under the sweep's MLflow run, resumed without duplicates."""

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console
from typer.testing import CliRunner

from tests.corpus import invalid_cases
from tests.tiny import tiny_spec
from tradewind.api import Sweep, TrainingRun, load_resources
from tradewind.cli import app
from tradewind.significance import sharpe_stats
from tradewind.sweeps import study as sw
from tradewind.sweeps.local import (
    PARENT_RUN_ATTR,
    STEPS_RUN_ATTR,
    LocalSweep,
    run_sweep,
    sharpe_text,
)

EPOCHS = 4
SWEEP: dict[str, Any] = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "Sweep",
    "metadata": {"name": "tiny-sweep"},
    "spec": {
        "template": {
            "kind": "TrainingRun",
            "spec": tiny_spec(epochs=EPOCHS, deterministic=False, num_bars=1200)
            | {"tracking": {"systemMetrics": False, "experiment": "sweep-test"}},
        },
        "objective": {"metric": "val_loss"},
        "searchSpace": {
            "training.optimizer.learningRate": {"type": "loguniform", "low": 1e-5, "high": 3e-2},
            "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        },
        "sampler": "random",
        "pruner": {"type": "successive_halving", "minResource": 1, "reductionFactor": 3},
        "maxTrials": 5,
        "parallelism": 2,
        "seed": 3,
    },
}


def _failing_sweep(tmp_path: Path, spec: dict[str, Any]) -> Path:
    """SWEEP with `spec` laid over its spec, whose trials' trainers all exit 66 at once (no
    such data file), written to a file."""
    doc = copy.deepcopy(SWEEP)
    doc["spec"]["template"]["spec"]["data"] = {"source": f"file://{tmp_path}/missing.csv"}
    doc["spec"] |= spec
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sweep(path: Path) -> Sweep:
    path.write_text(yaml.safe_dump(SWEEP))
    (sweep,) = load_resources(path)
    assert isinstance(sweep, Sweep)
    return sweep


def test_a_local_sweep_prunes_nests_its_runs_and_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = tmp_path / "state"
    sweep = _sweep(tmp_path / "sweep.yaml")
    storage = f"sqlite:///{state / 'sweeps' / 'tiny-sweep' / 'optuna.db'}"
    (state / "sweeps" / "tiny-sweep").mkdir(parents=True)
    # A sweep killed while trial 0 ran: the study holds it Running.
    killed = sw.create_or_load(sweep.spec, "tiny-sweep", storage)
    _, left_params = sw.ask(killed, sweep.spec)

    out = io.StringIO()
    outcome = run_sweep(sweep, state, Console(file=out, width=200))
    text = out.getvalue()
    assert outcome.succeeded, text

    study = outcome.study
    assert sw.interrupted(study) == {0}
    counted = sw.counted_trials(study)
    assert len(counted) == 5  # maxTrials, the interrupted trial re-run in place of itself
    assert sw.decode_params(sweep.spec, counted[0].params) == left_params
    states = [t.state for t in counted]
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states, text
    for t in counted:
        if t.state == TrialState.PRUNED:
            assert len(t.intermediate_values) < EPOCHS
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == EPOCHS == t.user_attrs[STEPS_RUN_ATTR]
    # Pruning cut the study short; how many epochs a pruned process had logged before it
    # was stopped depends on the machine's load, so the count is bounded, not pinned.
    assert sum(len(t.intermediate_values) for t in counted) < 5 * EPOCHS
    assert outcome.steps_run <= 6 * EPOCHS  # the interrupted trial's run counts too

    # MLflow: one parent run, one nested run per trial that started; pruned runs killed.
    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    parent = client.get_run(parent_id)
    assert parent.data.tags["tradewind.kind"] == "Sweep"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == outcome.best_value
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    by_name = {r.data.tags["tradewind.name"]: r for r in children}
    for t in counted:
        child = by_name[f"tiny-sweep-{t.number}"]
        expected = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}[t.state]
        assert child.info.status == expected

    # The best trial, printed with the manifest that re-runs it.
    best = study.best_trial
    assert outcome.best_value == best.value
    (rerun,) = load_resources(outcome.folder / "best.yaml")
    assert isinstance(rerun, TrainingRun)
    lr = best.params["training.optimizer.learningRate"]
    assert rerun.spec.training.optimizer.learning_rate == lr
    assert f"tradewind run -f {outcome.folder / 'best.yaml'}" in text
    assert "deflated Sharpe" in text

    # Re-running a finished sweep starts nothing and duplicates nothing.
    again = run_sweep(sweep, state, Console(file=io.StringIO()))
    assert len(again.study.trials) == len(study.trials)
    assert again.best_value == outcome.best_value
    assert study.user_attrs[PARENT_RUN_ATTR] == again.study.user_attrs[PARENT_RUN_ATTR]


def test_a_failing_trial_fails_the_sweep_after_max_failed_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = _failing_sweep(tmp_path, {"maxFailedTrials": 0, "maxTrials": 3, "parallelism": 1})
    result = CliRunner().invoke(app, ["run", "-f", str(path), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 1, result.output
    assert "sweep failed" in result.output
    storage = f"sqlite:///{tmp_path / 's' / 'sweeps' / 'tiny-sweep' / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-sweep", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


@pytest.mark.parametrize(
    "case",
    [
        "sw-path-not-in-template",
        "sw-choice-empty",
        "sw-low-not-below-high",
        "sw-log-low-zero",
        "sw-pruner-multi-objective",
    ],
)
def test_run_rejects_a_bad_sweep_with_one_line_naming_the_field(case: str) -> None:
    (bad,) = [c for c in invalid_cases() if c.name == case]
    result = CliRunner().invoke(app, ["run", "-f", str(bad.path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"{bad.field}: " in lines[0]
    assert bad.fragment in lines[0]


def test_run_help_mentions_sweeps() -> None:
    result = CliRunner().invoke(app, ["run", "--help"])
    assert "Sweep" in result.output


def test_a_terminated_sweep_stops_its_trials_and_leaves_them_to_requeue(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    path = tmp_path / "sweep.yaml"
    _sweep(path)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "tradewind.cli", "run", "-f", str(path), "--state-dir", str(state)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trials = state / "sweeps" / "tiny-sweep" / "trials"

    def trial_processes() -> list[psutil.Process]:
        return [p for p in psutil.Process(proc.pid).children(recursive=True)
                if str(trials) in " ".join(p.cmdline())]  # fmt: skip

    deadline = time.monotonic() + 300
    while len(trial_processes()) < 2:
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline
        time.sleep(0.5)
    children = trial_processes()
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0
    assert "interrupted; re-run to continue" in output
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    storage = f"sqlite:///{state / 'sweeps' / 'tiny-sweep' / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-sweep", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2


def test_no_trial_starts_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = _failing_sweep(tmp_path, {"timeoutSeconds": 1, "maxTrials": 4, "parallelism": 1})
    (sweep,) = load_resources(path)
    assert isinstance(sweep, Sweep)
    outcome = run_sweep(sweep, tmp_path / "s", Console(file=io.StringIO()))
    assert outcome.succeeded  # 1 failed trial is within maxFailedTrials (3)
    assert len(outcome.study.trials) == 1  # the first trial outlived the timeout
    # Resumed: the timeout counts from the sweep's first trial, not from this start.
    outcome = run_sweep(sweep, tmp_path / "s", Console(file=io.StringIO()))
    assert len(outcome.study.trials) == 1


def test_the_summary_prints_the_best_trials_deflated_sharpe_and_logs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a sweep, without trial processes: a study told as trials would be."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = _sweep(tmp_path / "sweep.yaml")
    out = io.StringIO()
    local = LocalSweep(sweep, tmp_path / "state", Console(file=out, width=200))
    local.tracking.start_parent(sweep, None)
    for i in range(5):
        trial, _ = sw.ask(local.study, sweep.spec)
        returns = np.random.default_rng(i).normal(0.001, 0.01, 252)
        sharpe = sharpe_stats(returns, 252.0, n_boot=100).as_metrics("backtest")
        sw.tell(local.study, sweep.spec, trial.number, {"val_loss": 1.0 - 0.1 * i} | sharpe)
    outcome = local._finish(True, 1.0)
    text = out.getvalue()
    best = outcome.study.best_trial
    _, summary, _, _ = sw.summarise(outcome.study, sweep.spec, {})
    assert summary is not None and summary.sharpe is not None
    assert f"deflated Sharpe {summary.sharpe.deflated:.3f} over 5 trials tried" in text
    assert f"PSR {summary.sharpe.psr:.3f}" in text
    parent = MlflowClient(local.tracking_uri).get_run(local.tracking.parent_id)
    assert parent.data.metrics["best_deflated_sharpe"] == summary.sharpe.deflated
    assert parent.data.metrics["best_sharpe"] == best.user_attrs[sw.SHARPE_ATTR]["sharpe"]
    assert parent.data.metrics["sharpe_trials"] == 5


def test_a_best_trial_without_a_sharpe_says_so() -> None:
    assert sharpe_text(None, "backtest") == (
        "deflated Sharpe: n/a (the trial logged no backtest_sharpe with its statistics)"
    )
