"""An RLRun end to end: train each agent (one per pod index in a cluster, one after the other
with `tradewind run`), then combine: evaluate every agent, the ensemble and buy-and-hold on
the held-out market after costs.

`python -m tradewind.trainer.rl --config run.yaml (--agent-index I | --combine)`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecNormalize

from tradewind.api import ManifestError, RLRun, load_resources
from tradewind.api.rl import RLRunSpec
from tradewind.trainer import plots
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.entrypoint import EXIT_BAD_CONFIG, EXIT_DATA_NOT_FOUND
from tradewind.trainer.evaluation import bars_per_year, performance
from tradewind.trainer.rl.ensemble import Member, Policy, RLEnsemble
from tradewind.trainer.rl.market import Market, load_market
from tradewind.trainer.rl.training import AgentEnvs, make_envs, restore_agent, train_agent
from tradewind.trainer.storage import open_store
from tradewind.trainer.tracking import Tracker, default_tracking_uri

log = logging.getLogger(__name__)


def checkpoint_base(run: RLRun, state_dir: Path) -> str:
    base = run.spec.checkpoint.storage or os.environ.get("TRADEWIND_CHECKPOINT_URI")
    if base is None:
        return (state_dir / "checkpoints" / run.metadata.name).resolve().as_uri()
    return (
        base
        if run.spec.checkpoint.storage
        else f"{base.rstrip('/')}/{run.metadata.namespace or 'default'}/{run.metadata.name}"
    )


def agent_checkpointer(run: RLRun, state_dir: Path, name: str) -> Checkpointer:
    return Checkpointer(
        open_store(f"{checkpoint_base(run, state_dir)}/agents/{name}"),
        run.spec.checkpoint.keep_last,
    )


def _tracker(run: RLRun, state_dir: Path, role: str) -> Tracker:
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri(state_dir))
    tracker = Tracker(enabled=True)
    tags = {
        "tradewind.kind": "RLRun",
        "tradewind.name": run.metadata.name,
        "tradewind.namespace": run.metadata.namespace or "",
        "tradewind.role": role,
        **run.spec.tracking.tags,
    }
    params = run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    tracker.start(run.spec.tracking.experiment, f"{run.metadata.name}-{role}", tags, params)
    return tracker


def run_markets(spec: RLRunSpec) -> tuple[Market, Market]:
    """The run's training and held-out markets (the last eval.split of the bars)."""
    return load_market(spec.environment, seed=spec.seed, eval_fraction=spec.eval.split)


def train_one(run: RLRun, index: int, state_dir: Path, progress_bar: bool = False) -> None:
    """Train (or resume) agent `index`, then log the trained policy's equity curve on the
    held-out market against buy-and-hold (figure `equity_curve.png`, table `evaluation.json`,
    metrics `eval_*` and `buy_and_hold_*`)."""
    agent = run.spec.agents[index]
    markets = run_markets(run.spec)
    tracker = _tracker(run, state_dir, agent.name)
    try:
        checkpointer = agent_checkpointer(run, state_dir, agent.name)
        seed = run.spec.seed + index
        model, envs = train_agent(
            run.spec, agent, markets, checkpointer, tracker, seed, progress_bar=progress_bar
        )
        series = {
            agent.name: play_episode(markets[1], run.spec, agent_policy(model, envs)),
            BUY_AND_HOLD: play_episode(markets[1], run.spec, buy_and_hold(run.spec, markets[1])),
        }
        rows = strategy_rows(series, markets[1])
        step = int(model.num_timesteps)
        tracker.metrics(_row_metrics(rows[0], "eval") | _row_metrics(rows[1], BUY_AND_HOLD), step)
        tracker.table(rows, "evaluation.json")
        _log_figure(
            tracker,
            plots.equity_curves(
                {name: returns for name, (returns, _) in series.items()},
                title=f"Equity on held-out bars after costs: {agent.name} vs buy-and-hold",
                xlabel="step (held-out bars)",
            ),
            "equity_curve.png",
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()


BUY_AND_HOLD = "buy_and_hold"
ROW_METRICS = ("total_return", "sharpe", "max_drawdown", "turnover")


def _log_figure(tracker: Tracker, figure: Any, name: str) -> None:
    import matplotlib.pyplot as plt

    tracker.figure(figure, name)
    plt.close(figure)


def _row_metrics(row: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{key}": float(row[key]) for key in ROW_METRICS}


def agent_policy(model: Any, envs: AgentEnvs) -> Policy:
    """The agent's deterministic policy on raw observations (normalised with the training
    env's VecNormalize statistics when the run normalises)."""
    norm = envs.train if isinstance(envs.train, VecNormalize) else None

    def policy(obs: np.ndarray) -> np.ndarray:
        seen = norm.normalize_obs(obs) if norm is not None else obs
        return np.asarray(model.predict(seen, deterministic=True)[0])

    return policy


def buy_and_hold(spec: RLRunSpec, market: Market) -> Policy:
    """Long every symbol at the largest position the environment allows."""
    n_symbols = market.num_symbols
    if spec.environment.action_space == "discrete":
        hold = np.full((1,), 3**n_symbols - 1)
    else:
        hold = np.ones((1, n_symbols), np.float32)
    return lambda obs: hold


def play_episode(
    market: Market,
    spec: RLRunSpec,
    act: Policy,
    after_step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic pass over `market` from its first bar: per-step returns and turnover
    after costs."""
    from tradewind.trainer.rl.vec_env import BatchedTradingEnv

    env = BatchedTradingEnv(market, spec.environment, 1, seed=spec.seed, random_start=False)
    obs = env.reset()
    value, returns, turnover = spec.environment.initial_balance, [], []
    for k in range(spec.environment.episode_length):
        step_obs, _, dones, _ = env.step(act(obs))
        obs = np.asarray(step_obs)
        new_value = float(env.last_step["portfolio_value"][0])  # before any autoreset
        returns.append(new_value / value - 1.0)
        turnover.append(float(env.last_step["turnover"][0]))
        value = new_value
        if after_step is not None:
            after_step(k)
        if dones[0]:
            break
    return np.array(returns), np.array(turnover)


def strategy_rows(
    series: dict[str, tuple[np.ndarray, np.ndarray]], market: Market
) -> list[dict[str, Any]]:
    """Return, annualised Sharpe, max drawdown and mean turnover of each strategy's episode."""
    ppy = bars_per_year(market.timestamps)
    rows = []
    for name, (returns, turnover) in series.items():
        perf = performance(returns, returns, np.ones(len(returns)), ppy)
        keep = {k: perf[k] for k in ("total_return", "sharpe", "max_drawdown")}
        mean_turnover = float(turnover.mean()) if len(turnover) else 0.0
        rows.append({"strategy": name, **keep, "turnover": mean_turnover})
    return rows


@dataclass
class EnsembleTrace:
    """What the ensemble did at each step of its episode: every member's target weights
    [steps, members, symbols], its own [steps, symbols] and the members' disagreement."""

    members: list[str]
    member_weights: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Summary of the disagreement: mean and max uncertainty, and the share of
        (step, symbol) at which every member takes the same side (short, flat or long)."""
        members = np.sign(np.array(self.member_weights))
        agree = (members == members[:, :1]).all(axis=1)
        spread = np.array(self.uncertainty)
        return {
            "ensemble_uncertainty_mean": float(spread.mean()),
            "ensemble_uncertainty_max": float(spread.max()),
            "ensemble_side_agreement": float(agree.mean()),
        }


def combine(run: RLRun, state_dir: Path) -> list[dict[str, Any]]:
    """Each agent (its best checkpoint), the ensemble and buy-and-hold on the held-out market;
    logged to MLflow (role `combine`): the table, `<strategy>_<metric>` metrics, the equity
    curves and, with `ensemble.uncertainty`, the members' disagreement per step and its plot."""
    train, evaluation = run_markets(run.spec)
    spec = run.spec
    members: list[Member] = []
    for agent in spec.agents:
        checkpointer = agent_checkpointer(run, state_dir, agent.name)
        state = (
            checkpointer.load(checkpointer.best_step)
            if checkpointer.best_step is not None
            else checkpointer.load_latest()
        )
        if state is None:
            raise FileNotFoundError(
                f"agent {agent.name} has no checkpoint in {checkpoint_base(run, state_dir)}"
            )
        envs: AgentEnvs = make_envs(spec, train, evaluation, seed=spec.seed)
        model = restore_agent(agent, state, envs, "cpu")
        members.append(Member(agent.name, agent_policy(model, envs), weight=agent.weight))
    series = {m.name: play_episode(evaluation, spec, m.policy) for m in members}
    trace: EnsembleTrace | None = None
    if spec.ensemble is not None:
        ens = RLEnsemble(
            members,
            spec.ensemble.method,
            spec.environment.action_space == "discrete",
            evaluation.num_symbols,
            spec.ensemble.performance_window,
            spec.seed,
        )
        member_returns = {m.name: series[m.name][0] for m in members}
        trace = EnsembleTrace([m.name for m in members])

        def record(k: int) -> None:
            trace.member_weights.append(ens.last_weights[:, 0, :])
            trace.weights.append(ens.last_combined[0])
            trace.uncertainty.append(float(ens.last_uncertainty[0]))
            ens.record(
                [
                    member_returns[m.name][k] if k < len(member_returns[m.name]) else 0.0
                    for m in members
                ]
            )

        series["ensemble"] = play_episode(evaluation, spec, ens.act, record)
    series[BUY_AND_HOLD] = play_episode(evaluation, spec, buy_and_hold(spec, evaluation))
    rows = strategy_rows(series, evaluation)
    tracker = _tracker(run, state_dir, "combine")
    try:
        uncertainty = spec.ensemble is not None and spec.ensemble.uncertainty
        _log_combine(tracker, rows, series, trace if uncertainty else None)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return rows


def _log_combine(
    tracker: Tracker,
    rows: list[dict[str, Any]],
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    trace: EnsembleTrace | None,
) -> None:
    metrics: dict[str, float] = {}
    for row in rows:
        metrics |= _row_metrics(row, row["strategy"])
    tracker.table(rows, "evaluation.json")
    _log_figure(
        tracker,
        plots.equity_curves(
            {name: returns for name, (returns, _) in series.items()},
            title="Equity on held-out bars after costs: agents, ensemble, buy-and-hold",
            xlabel="step (held-out bars)",
        ),
        "equity_curves.png",
    )
    if trace is not None and trace.uncertainty:
        metrics |= trace.metrics()
        log_series(tracker, "ensemble_uncertainty", trace.uncertainty)
        members = np.array(trace.member_weights)  # [steps, members, symbols]
        _log_figure(
            tracker,
            plots.ensemble_uncertainty(
                {name: members[:, i, :].sum(axis=1) for i, name in enumerate(trace.members)},
                np.array(trace.weights).sum(axis=1),
                np.array(trace.uncertainty),
            ),
            "ensemble_uncertainty.png",
        )
    tracker.metrics(metrics, step=0)


def log_series(tracker: Tracker, key: str, values: list[float]) -> None:
    """A metric with one value per step (0, 1, ...), in batches of 1000 (one request each)."""
    if not tracker.enabled or tracker.run_id is None:
        return
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, now = MlflowClient(), int(time.time() * 1000)
    points = [Metric(key, float(v), now, step) for step, v in enumerate(values)]
    for start in range(0, len(points), 1000):
        client.log_batch(tracker.run_id, metrics=points[start : start + 1000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradewind.trainer.rl", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("TRADEWIND_STATE_DIR", ".tradewind"))
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--agent-index", type=int)
    group.add_argument("--combine", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        resources = load_resources(args.config)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if len(resources) != 1 or not isinstance(resources[0], RLRun):
        print(f"error: {args.config}: expected one RLRun", file=sys.stderr)
        return EXIT_BAD_CONFIG
    run = resources[0]
    from tradewind.trainer.data.errors import DataError

    try:
        if args.combine:
            for row in combine(run, args.state_dir):
                print(row)
        else:
            train_one(run, args.agent_index, args.state_dir)
    except DataError as exc:
        print(f"error: data: {exc}", file=sys.stderr)
        return EXIT_DATA_NOT_FOUND
    return 0
