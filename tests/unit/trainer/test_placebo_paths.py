"""Every evaluation path on the placebo markets: no edge where nothing is tradable at the next
bar (a random walk; a bar-level reversal that only a fill at the signal bar could earn), the
edge found where one is planted. Small data, seeded; `edge` means PSR >= 0.95 (DSR for a
Sweep's best; over several seeds, their PSRs combined), so each no-edge case has a 5% chance of
a false edge per seed by design.

The same-bar test shows these checks have teeth: with the old execution (the trade earns
from the signal bar's own close) the reversal market shows a large false edge."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from tests.tiny import tiny_spec
from tradewind.api import RLRun, Sweep, TrainingRun, parse_resource
from tradewind.placebo import Figures, Resource, Verdict, check, run_paths, training_figures
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.distributed import init_distributed
from tradewind.trainer.folds import evaluate_folds
from tradewind.trainer.storage import LocalStore
from tradewind.trainer.supervised import SupervisedTrainer
from tradewind.trainer.tracking import Tracker

KINDS = ["random_walk", "reversal", "planted_edge"]


def _manifest(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "placebo-test"},
        "spec": spec,
    }


def _training_spec(**evaluation: Any) -> dict[str, Any]:
    spec = tiny_spec(num_bars=1200)
    spec["data"] |= {"predictionHorizon": 5, "split": {"validation": 0.2, "test": 0.2}}
    spec["evaluation"] = evaluation
    return spec


def _train_here(run: Resource, state_dir: Path, console: Console) -> Figures:
    """The TrainingRun's paths as `tradewind placebo` judges them, trained without MLflow."""
    assert isinstance(run, TrainingRun)
    env = init_distributed("cpu")
    checkpointer = Checkpointer(LocalStore(state_dir), keep_last=1)
    trainer = SupervisedTrainer(run, env, checkpointer, Tracker(enabled=False))
    result = trainer.fit()
    return training_figures(result.backtest, evaluate_folds(run, trainer.data, env))


def _assert_judged(results: list[Verdict], paths: set[str]) -> None:
    table = [(r.market, r.path, round(r.probability, 3), r.ok) for r in results]
    assert {r.path for r in results} == paths, table
    assert {r.market for r in results} == set(KINDS), table
    assert all(r.ok for r in results), table


def test_supervised_paths_show_an_edge_only_where_one_is_planted(tmp_path: Path) -> None:
    # 3 retrainings on 300 bars each, tested on the next 300: 120 five-bar periods in all.
    # PSR accounts for autocorrelated returns (the planted regimes' are), so 60 are too few.
    # Five seeds judged together. Under one seed this small model misses the planted edge
    # now and then (of seeds 0-5: walk-forward under 3, CV 2, the backtest 1; under seed 3 it
    # learns the edge backwards); any five of those six combined find it on every path.
    spec = _training_spec(cvSplits=2, walkForwardWindow=300, walkForwardStep=300)
    run = parse_resource(_manifest("TrainingRun", spec))
    verdicts = check(run, KINDS, tmp_path, Console(quiet=True), runner=_train_here, seeds=5)
    _assert_judged(verdicts, {"backtest", "cross_validation", "walk_forward_retrained"})
    assert all(len(v.runs) == 5 for v in verdicts)


@pytest.mark.parametrize("execution", ["same_bar", "next_close", "next_open"])
def test_only_same_bar_execution_shows_a_false_edge_on_the_reversal_market(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, execution: str
) -> None:
    """What the placebo guards against: filled at the signal bar's own close (the old
    backtest), one-bar trades on the reversal market, where nothing is tradable, look like a
    gold mine; filled at the next bar, they show nothing."""
    from tradewind.trainer.data import dataset

    def same_bar(prices: np.ndarray, horizon: int) -> np.ndarray:
        out = np.full(len(prices), np.nan)
        out[:-horizon] = prices[horizon:] / prices[:-horizon] - 1.0
        return out

    spec = _training_spec()
    labels = {"buyThreshold": 0.001, "sellThreshold": -0.001}
    spec["data"] |= {"predictionHorizon": 1, "labels": labels}
    if execution == "same_bar":
        monkeypatch.setattr(dataset, "trade_returns", same_bar)
    else:
        spec["data"]["execution"] = execution
    run = parse_resource(_manifest("TrainingRun", spec))
    (result,) = check(run, ["reversal"], tmp_path, Console(quiet=True), runner=_train_here)
    assert result.shows_edge == (execution == "same_bar"), result


def _rl_spec() -> dict[str, Any]:
    return {
        "seed": 7,
        "environment": {
            "data": {
                "source": "synthetic",
                "synthetic": {"numSymbols": 1, "numBars": 1500},
                "features": ["returns", "log_returns", "macd"],
            },
            "lookbackWindow": 10,
            "episodeLength": 100,
        },
        "agents": [
            {"name": "ppo", "algorithm": "ppo", "hyperparameters": {"n_steps": 128}},
            # members of both action spaces: the ensemble acts on their target weights
            {"name": "a2c", "algorithm": "a2c", "actionSpace": "continuous"},
        ],
        "ensemble": {"method": "weighted_average"},
        "totalTimesteps": 8000,
        "nEnvs": 4,
        "eval": {"freq": 4000, "episodes": 1},
        "checkpoint": {"interval": 100},
        "tracking": {"systemMetrics": False},
    }


def test_rl_agents_and_ensemble_show_an_edge_only_where_one_is_planted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = parse_resource(_manifest("RLRun", _rl_spec()))
    assert isinstance(run, RLRun)
    results = check(run, KINDS, tmp_path, Console(quiet=True), runner=run_paths)
    _assert_judged(results, {"rl ppo", "rl a2c", "rl ensemble"})


def _grid_search_paths(resource: Resource, state_dir: Path, console: Console) -> Figures:
    """`tradewind rl grid-search`'s figures of its best combination: chosen on the
    validation bars and judged there by its Deflated Sharpe Ratio over the combinations, and
    its test figures, which the choice never read."""
    from tradewind.significance import SharpeStats
    from tradewind.trainer.rl.grid_search import grid_search

    assert isinstance(resource, RLRun)
    result = grid_search(resource.spec, {"learning_rate": [3e-4, 1e-3]})
    best = result.rows[0]
    test, validation = SharpeStats.from_metrics(best, "test"), SharpeStats.from_metrics(best)
    assert test is not None and validation is not None and result.deflated_sharpe is not None
    return {
        "rl grid best (validation, deflated)": (validation, result.deflated_sharpe),
        "rl grid best (test)": (test, test.psr),
    }


def test_an_rl_grid_searchs_best_shows_an_edge_only_where_one_is_planted(
    tmp_path: Path,
) -> None:
    spec = _rl_spec() | {"totalTimesteps": 4000}  # each combination trains this long
    spec["agents"] = spec["agents"][:1]
    del spec["ensemble"]
    run = parse_resource(_manifest("RLRun", spec))
    verdicts = check(run, KINDS, tmp_path, Console(quiet=True), runner=_grid_search_paths)
    _assert_judged(verdicts, {"rl grid best (validation, deflated)", "rl grid best (test)"})


@pytest.mark.parametrize(
    ("objective", "evaluation"),
    [
        ({"metric": "val_loss", "direction": "minimize"}, {}),
        # the cross-validation's pooled Sharpe ratio: chosen on the folds, reported on test
        ({"metric": "cv_sharpe", "direction": "maximize"}, {"cvSplits": 2}),
    ],
)
def test_a_sweeps_best_trial_shows_an_edge_only_where_one_is_planted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    objective: dict[str, str],
    evaluation: dict[str, int],
) -> None:
    """Judged by the Deflated Sharpe Ratio of the best trial (by the objective) over the
    trials."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    template = copy.deepcopy(_training_spec(**evaluation))
    sweep_spec = {
        "template": {"kind": "TrainingRun", "spec": template},
        "objective": objective,
        "searchSpace": {"model.dropout": {"type": "grid", "values": [0.0, 0.2]}},
        "sampler": "grid",
        "maxTrials": 2,
        "parallelism": 2,
    }
    sweep = parse_resource(_manifest("Sweep", sweep_spec))
    assert isinstance(sweep, Sweep)
    results = check(sweep, KINDS, tmp_path, Console(quiet=True), runner=run_paths)
    _assert_judged(results, {"sweep best (deflated)"})
