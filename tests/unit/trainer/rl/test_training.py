"""Training one agent: checkpoints every `checkpoint.interval` thousand timesteps (unranked,
for resuming) besides the ranked ones at each evaluation on the validation market."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.unit.trainer.rl.markets import random_market
from tradewind.api.rl import AgentSpec, RLRunSpec
from tradewind.trainer.checkpoint import Checkpointer, Mode
from tradewind.trainer.rl.market import split_market
from tradewind.trainer.rl.training import next_multiple, train_agent
from tradewind.trainer.storage import LocalStore
from tradewind.trainer.tracking import Tracker

ROLLOUT = 128
"""PPO's 16 steps x 8 environments."""
TOTAL = 32 * ROLLOUT


class CountingCheckpointer(Checkpointer):
    """A checkpointer that records the step and metric of every save."""

    def __init__(self, root: Path) -> None:
        super().__init__(LocalStore(root), keep_last=2)
        self.saves: list[tuple[int, float | None]] = []

    def save(
        self, step: int, state: dict[str, Any], metric: float | None = None, mode: Mode = "min"
    ) -> str:
        self.saves.append((step, metric))
        return super().save(step, state, metric, mode)


def _spec(interval: int, eval_freq: int) -> RLRunSpec:
    return RLRunSpec.model_validate(
        {
            "environment": {"lookbackWindow": 3, "episodeLength": 20, "actionSpace": "continuous"},
            "agents": [
                {
                    "name": "ppo",
                    "algorithm": "ppo",
                    "hyperparameters": {
                        "n_steps": 16,
                        "batch_size": 64,
                        "n_epochs": 1,
                        "net_arch": [4],
                    },
                }
            ],
            "totalTimesteps": TOTAL,
            "nEnvs": 8,
            "normalize": False,
            "eval": {"freq": eval_freq, "episodes": 1},
            "checkpoint": {"interval": interval},
        }
    )


def _train(spec: RLRunSpec, root: Path) -> list[tuple[int, float | None]]:
    markets = split_market(random_market(n_bars=120, seed=3), spec.environment, 0.2, 0.2)
    checkpointer = CountingCheckpointer(root)
    model, _ = train_agent(
        spec, spec.agents[0], markets, checkpointer, Tracker(enabled=False), seed=0
    )
    assert model.num_timesteps == TOTAL
    return checkpointer.saves


def test_checkpoints_every_interval_thousand_timesteps(tmp_path: Path) -> None:
    interval = 2
    saves = _train(_spec(interval, eval_freq=10 * TOTAL), tmp_path)
    assert len(saves) == TOTAL // (interval * 1000)
    # At the first rollout end past each multiple, unranked; the last
    # is the final evaluation's, ranked.
    expected = [next_multiple(k * interval * 1000 - 1, ROLLOUT) for k in range(1, len(saves))]
    assert [step for step, _ in saves[:-1]] == expected
    assert all(metric is None for _, metric in saves[:-1])
    assert saves[-1][0] == TOTAL and saves[-1][1] is not None


def test_evaluations_save_ranked_checkpoints_between_the_interval_ones(tmp_path: Path) -> None:
    saves = _train(_spec(1, eval_freq=1500), tmp_path)
    assert [step for step, _ in saves] == [1024, 1536, 2048, 3072, TOTAL]
    ranked = [step for step, metric in saves if metric is not None]
    assert ranked == [1536, 3072, TOTAL]  # an evaluation and a due checkpoint save once
    best = Checkpointer(LocalStore(tmp_path)).best_step
    assert best in ranked


def test_a_resumed_run_schedules_from_where_it_stopped() -> None:
    assert next_multiple(0, 1000) == 1000
    assert next_multiple(1999, 1000) == 2000
    assert next_multiple(2000, 1000) == 3000


class RecordingTracker(Tracker):
    """Keeps what would go to MLflow: (step, metrics) per call."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.logged: list[tuple[int, dict[str, float]]] = []

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.logged.append((step, dict(values)))


def _logged_steps(spec: RLRunSpec, root: Path, key: str) -> list[int]:
    markets = split_market(random_market(n_bars=120, seed=3), spec.environment, 0.2, 0.2)
    tracker = RecordingTracker()
    train_agent(spec, spec.agents[0], markets, Checkpointer(LocalStore(root)), tracker, seed=0)
    return [step for step, values in tracker.logged if key in values]


@pytest.mark.parametrize("interval", [None, 4])
def test_sb3s_metrics_reach_the_tracker_every_log_interval(
    tmp_path: Path, interval: int | None
) -> None:
    spec = _spec(100, eval_freq=10 * TOTAL)
    if interval:
        spec.agents[0].log_interval = interval
    every = (interval or 1) * ROLLOUT  # PPO's default: every iteration
    steps = _logged_steps(spec, tmp_path, "train_value_loss")
    # a dump holds the update before it: none is logged before the second iteration
    assert steps == list(range(2 * ROLLOUT if every == ROLLOUT else every, TOTAL + 1, every))
    progress = _logged_steps(spec, tmp_path / "again", "progress")
    assert progress[-1] == TOTAL and len(progress) == TOTAL // every + 1  # and the final eval


def test_an_off_policy_agent_logs_every_few_episodes_not_every_step(tmp_path: Path) -> None:
    spec = _spec(100, eval_freq=10 * TOTAL)
    sac = {"name": "sac", "algorithm": "sac", "hyperparameters": {"net_arch": [4]}}
    spec = spec.model_copy(update={"agents": [AgentSpec.model_validate(sac)],
                                   "total_timesteps": 640})  # fmt: skip
    steps = _logged_steps(spec, tmp_path, "progress")
    # 80 steps of 8 environments, episodes of 20 bars: a dump every 4 episodes (SB3's
    # default), not one per step as a rollout of SAC is
    assert 2 <= len(steps) <= 640 // (4 * 20 // 8) + 1, steps
