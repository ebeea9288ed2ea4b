"""An RLRun agent's own report (`eval_*`, `test_*`, its table and figure) is of the weights
`combine` evaluates: its best checkpoint by validation reward, or its final model when no
checkpoint is ranked; tag `reported_checkpoint` and metric `reported_timesteps` say which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.trainer.test_rl_tracking import tiny_rlrun, train_and_combine
from tradewind.api import RLRun
from tradewind.trainer.rl import training
from tradewind.trainer.rl.run import (
    agent_checkpointer,
    agent_policy,
    play_episode,
    run_markets,
    strategy_rows,
)
from tradewind.trainer.rl.training import AgentEnvs, make_envs, restore_agent

FIGURES = ("total_return", "sharpe", "psr", "max_drawdown", "turnover")


def _agent_runs(state_dir: Path, run: RLRun) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(state_dir / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name(run.spec.tracking.experiment)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`tradewind.name` = '{run.metadata.name}'"
    )
    return {r.data.tags["tradewind.role"]: r for r in found}


def _test_row_of_step(run: RLRun, state_dir: Path, index: int, step: int) -> dict[str, Any]:
    """The test-market row of agent `index` restored from its checkpoint of `step`."""
    agent = run.spec.agents[index]
    spec = run.spec.for_agent(agent)
    markets = run_markets(run.spec)
    state = agent_checkpointer(run, state_dir, agent.name).load(step)
    envs: AgentEnvs = make_envs(spec, markets.train, markets.validation, seed=run.spec.seed)
    model = restore_agent(agent, state, envs, "cpu", seed=run.spec.seed + index)
    series = {agent.name: play_episode(markets.test, spec, agent_policy(model, envs))}
    return strategy_rows(series, markets.test)[0]


def test_an_agent_reports_its_best_checkpoint_the_one_combine_evaluates(
    local_tracking: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # validation reward falls with training: the first evaluation (the first rollout end
    # after 32 timesteps) is the best checkpoint, the final model is not
    monkeypatch.setattr(
        training, "evaluation_reward", lambda model, envs, spec: -float(model.num_timesteps)
    )
    run = tiny_rlrun("reported-best", "rl-reported-best")
    rows = {r["strategy"]: r for r in train_and_combine(run, local_tracking)}
    logged = _agent_runs(local_tracking, run)
    for index, agent in enumerate(run.spec.agents):
        checkpointer = agent_checkpointer(run, local_tracking, agent.name)
        first, last = checkpointer.best_step, checkpointer.latest_step
        assert first is not None and last is not None and 32 <= first < 64 <= last
        data = logged[agent.name].data
        assert data.tags["reported_checkpoint"] == "best"
        assert data.metrics["reported_timesteps"] == first
        # the latest validation reward (a Sweep's objective) is the reported checkpoint's
        assert data.metrics["eval_mean_reward"] == -float(first)
        best = _test_row_of_step(run, local_tracking, index, first)
        final = _test_row_of_step(run, local_tracking, index, last)
        # the two weights trade the test bars differently: the old report could not pass
        assert any(best[key] != pytest.approx(final[key]) for key in FIGURES)
        for key in FIGURES:
            assert data.metrics[f"test_{key}"] == pytest.approx(best[key]), key
            assert data.metrics[f"test_{key}"] == pytest.approx(rows[agent.name][key]), key


def test_without_a_ranked_checkpoint_an_agent_reports_its_final_model(
    local_tracking: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a non-finite validation reward ranks no checkpoint: the final model is reported, as
    # combine evaluates the latest checkpoint
    monkeypatch.setattr(training, "evaluation_reward", lambda model, envs, spec: float("nan"))
    manifest = tiny_rlrun("reported-final", "rl-reported-final").model_dump(
        mode="json", by_alias=True
    )
    manifest["spec"]["agents"] = manifest["spec"]["agents"][:1]
    del manifest["spec"]["ensemble"]
    run = RLRun.model_validate(manifest)
    rows = {r["strategy"]: r for r in train_and_combine(run, local_tracking)}
    assert agent_checkpointer(run, local_tracking, "ppo").best_step is None
    data = _agent_runs(local_tracking, run)["ppo"].data
    assert data.tags["reported_checkpoint"] == "final"
    assert data.metrics["reported_timesteps"] == 64
    final = _test_row_of_step(run, local_tracking, 0, 64)
    for key in FIGURES:
        assert data.metrics[f"test_{key}"] == pytest.approx(final[key]), key
        assert data.metrics[f"test_{key}"] == pytest.approx(rows["ppo"][key]), key
