"""What an RLRun leaves in MLflow: each agent's equity curve against buy-and-hold, and the
combine step's table, metrics, equity curves and the ensemble's uncertainty (here on the local
SQLite store; tests/integration/test_rl_tracking.py does the same against the MLflow server)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tradewind.api import RLRun
from tradewind.trainer.rl.run import EnsembleTrace, _log_combine, combine, run_markets, train_one
from tradewind.trainer.tracking import Tracker

PNG = b"\x89PNG"


def tiny_rlrun(name: str, experiment: str, uncertainty: bool = True) -> RLRun:
    """Two small agents on one bundled stock, an ensemble over them; seconds to train."""
    return RLRun.model_validate(
        {
            "apiVersion": "tradewind.dev/v1alpha1",
            "kind": "RLRun",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "environment": {
                    "data": {"source": "stocks", "symbols": ["AAPL", "MSFT"]},
                    "actionSpace": "continuous",
                    "episodeLength": 40,
                    "maxPositionSize": 0.5,
                },
                "agents": [
                    {
                        "name": "ppo",
                        "algorithm": "ppo",
                        "hyperparameters": {"n_steps": 16, "batch_size": 16, "net_arch": [8]},
                    },
                    {
                        "name": "a2c",
                        "algorithm": "a2c",
                        "hyperparameters": {"net_arch": [8]},
                        "weight": 2.0,
                    },
                ],
                "ensemble": {"method": "weighted_average", "uncertainty": uncertainty},
                "totalTimesteps": 64,
                "nEnvs": 2,
                "eval": {"freq": 32, "episodes": 1},
                "tracking": {"experiment": experiment, "systemMetrics": False},
            },
        }
    )


def train_and_combine(run: RLRun, state_dir: Path) -> list[dict[str, Any]]:
    for index in range(len(run.spec.agents)):
        train_one(run, index, state_dir)
    return combine(run, state_dir)


def check_logged(client: Any, run: RLRun, rows: list[dict[str, Any]]) -> None:
    """The MLflow runs of `run` hold the figures, tables and metrics the trainer logs."""
    experiment = client.get_experiment_by_name(run.spec.tracking.experiment)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`tradewind.name` = '{run.metadata.name}'"
    )
    by_role = {r.data.tags["tradewind.role"]: r for r in found}
    assert set(by_role) == {"ppo", "a2c", "combine"}
    episode = run.spec.environment.episode_length
    for agent in ("ppo", "a2c"):
        logged = by_role[agent]
        artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
        assert {"equity_curve.png", "evaluation.json"} <= artifacts
        for key in (
            "eval_total_return",  # validation: what checkpoint selection and Sweeps read
            "eval_sharpe",
            "eval_max_drawdown",
            "eval_turnover",
            "eval_buy_and_hold_total_return",
            "eval_buy_and_hold_sharpe",
            "eval_mean_reward",
            "test_total_return",  # test: held out from every choice
            "test_sharpe",
            "test_psr",
            "test_max_drawdown",
            "test_turnover",
            "test_buy_and_hold_total_return",
            "test_buy_and_hold_sharpe",
        ):
            assert key in logged.data.metrics, key
        assert logged.data.metrics["eval_sharpe"] != logged.data.metrics["test_sharpe"]
        local = client.download_artifacts(logged.info.run_id, "equity_curve.png")
        assert Path(local).read_bytes()[:4] == PNG
    combined = by_role["combine"]
    artifacts = {a.path for a in client.list_artifacts(combined.info.run_id)}
    assert {"equity_curves.png", "ensemble_uncertainty.png", "evaluation.json"} <= artifacts
    metrics = combined.data.metrics
    for row in rows:  # the table printed is the table logged
        for key in ("total_return", "sharpe", "max_drawdown", "turnover"):
            assert metrics[f"{row['strategy']}_{key}"] == pytest.approx(row[key])
    assert {r["strategy"] for r in rows} == {"ppo", "a2c", "ensemble", "buy_and_hold"}
    # combine reports on the test market: buy-and-hold there is the agents' test baseline
    test_hold = by_role["ppo"].data.metrics["test_buy_and_hold_total_return"]
    assert metrics["buy_and_hold_total_return"] == pytest.approx(test_hold)
    assert metrics["buy_and_hold_total_return"] != pytest.approx(
        by_role["ppo"].data.metrics["eval_buy_and_hold_total_return"]
    )
    history = client.get_metric_history(combined.info.run_id, "ensemble_uncertainty")
    values = np.array([m.value for m in sorted(history, key=lambda m: m.step)])
    # one pass over every bar of the test market (after its first window)
    test_market = run_markets(run.spec).test
    steps = test_market.num_bars - run.spec.environment.lookback_window
    assert steps > episode
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(steps))
    assert (values >= 0).all()
    shares = [
        [
            m.value
            for m in sorted(
                client.get_metric_history(combined.info.run_id, key), key=lambda m: m.step
            )
        ]
        for key in ("ensemble_share_ppo", "ensemble_share_a2c")
    ]
    assert len(shares[0]) == steps and np.allclose(np.add(*shares), 1.0)
    assert metrics["ensemble_uncertainty_mean"] == pytest.approx(values.mean())
    assert metrics["ensemble_uncertainty_max"] == pytest.approx(values.max())
    assert 0.0 <= metrics["ensemble_side_agreement"] <= 1.0
    local = client.download_artifacts(combined.info.run_id, "ensemble_uncertainty.png")
    assert Path(local).read_bytes()[:4] == PNG


@pytest.fixture
def local_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("MLFLOW_TRACKING_URI", "TRADEWIND_CHECKPOINT_URI", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "cache"))
    return tmp_path / "state"


def test_agents_and_the_combine_step_log_plots_and_uncertainty(local_only: Path) -> None:
    from mlflow.tracking import MlflowClient

    run = tiny_rlrun("tracked", "rl-tracking")
    rows = train_and_combine(run, local_only)
    check_logged(MlflowClient(f"sqlite:///{local_only / 'mlflow.db'}"), run, rows)


def test_an_ensemble_of_dqn_and_sac_trains_each_in_its_space_and_acts_continuous(
    local_only: Path,
) -> None:
    # the guide's ensemble mixes dqn (discrete) with sac and td3 (continuous)
    manifest = tiny_rlrun("mixed", "rl-mixed").model_dump(mode="json", by_alias=True)
    manifest["spec"]["environment"]["actionSpace"] = "discrete"
    manifest["spec"]["agents"] = [
        {"name": "dqn", "algorithm": "dqn", "hyperparameters": {"net_arch": [8]}},
        {
            "name": "sac",
            "algorithm": "sac",
            "actionSpace": "continuous",
            "hyperparameters": {"net_arch": [8], "learning_starts": 16, "batch_size": 16},
        },
    ]
    run = RLRun.model_validate(manifest)
    assert run.spec.for_ensemble().environment.action_space == "continuous"
    rows = train_and_combine(run, local_only)
    assert {r["strategy"] for r in rows} == {"dqn", "sac", "ensemble", "buy_and_hold"}
    assert all(np.isfinite(r["total_return"]) for r in rows)


class RecordingTracker(Tracker):
    """A tracker that keeps what it is given instead of sending it to MLflow."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.logged: dict[str, float] = {}
        self.figures: list[str] = []
        self.tables: list[str] = []

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.logged |= values

    def figure(self, figure: Any, name: str) -> None:
        self.figures.append(name)

    def table(self, rows: list[dict[str, Any]], name: str) -> None:
        self.tables.append(name)


def test_without_uncertainty_the_combine_step_logs_no_disagreement() -> None:
    rows = [
        {"strategy": s, "total_return": 0.1, "sharpe": 1.0, "max_drawdown": 0.05, "turnover": 0.2}
        for s in ("a", "b", "ensemble", "buy_and_hold")
    ]
    series = {row["strategy"]: (np.full(3, 0.01), np.zeros(3)) for row in rows}
    trace = EnsembleTrace(["a", "b"], [np.ones((2, 1))] * 3, [np.ones(1)] * 3, [0.0] * 3)
    for given in (None, trace):
        tracker = RecordingTracker()
        _log_combine(tracker, rows, series, given)
        assert tracker.tables == ["evaluation.json"]
        assert tracker.logged["ensemble_sharpe"] == 1.0 and len(tracker.logged) >= 16
        uncertain = {k for k in tracker.logged if k.startswith("ensemble_uncertainty")}
        if given is None:
            assert tracker.figures == ["equity_curves.png"] and not uncertain
        else:
            assert tracker.figures == ["equity_curves.png", "ensemble_uncertainty.png"]
            assert uncertain == {"ensemble_uncertainty_mean", "ensemble_uncertainty_max"}
            assert tracker.logged["ensemble_side_agreement"] == 1.0


def test_trace_metrics_measure_the_members_disagreement() -> None:
    trace = EnsembleTrace(["a", "b"])
    # step 0: same side on both symbols; step 1: opposite sides on symbol 0, flat vs long on 1
    trace.member_weights = [np.array([[0.5, 1.0], [1.0, 0.2]]), np.array([[1.0, 0.0], [-1.0, 1.0]])]
    trace.uncertainty = [0.2, 0.75]
    assert trace.metrics() == {
        "ensemble_uncertainty_mean": pytest.approx(0.475),
        "ensemble_uncertainty_max": 0.75,
        "ensemble_side_agreement": 0.5,
    }
