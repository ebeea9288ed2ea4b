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
from pathlib import Path
from typing import Any

import numpy as np

from tradewind.api import ManifestError, RLRun, load_resources
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.entrypoint import EXIT_BAD_CONFIG, EXIT_DATA_NOT_FOUND
from tradewind.trainer.evaluation import bars_per_year, performance
from tradewind.trainer.rl.ensemble import Member, RLEnsemble
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


def train_one(run: RLRun, index: int, state_dir: Path, progress_bar: bool = False) -> None:
    agent = run.spec.agents[index]
    markets = load_market(run.spec.environment, seed=run.spec.seed)
    tracker = _tracker(run, state_dir, agent.name)
    try:
        checkpointer = agent_checkpointer(run, state_dir, agent.name)
        seed = run.spec.seed + index
        train_agent(
            run.spec, agent, markets, checkpointer, tracker, seed, progress_bar=progress_bar
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()


def _episode(
    market: Market,
    run: RLRun,
    act: Callable[[np.ndarray], np.ndarray],
    after_step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic pass over the evaluation market: per-step returns and turnover."""
    from tradewind.trainer.rl.vec_env import BatchedTradingEnv

    env = BatchedTradingEnv(market, run.spec.environment, 1, seed=run.spec.seed, random_start=False)
    env.portfolio_infos = True
    obs = env.reset()
    value, returns, turnover = run.spec.environment.initial_balance, [], []
    for k in range(run.spec.environment.episode_length):
        step_obs, _, dones, infos = env.step(act(obs))
        obs = np.asarray(step_obs)
        info = infos[0]
        new_value = float(info["portfolio_value"])  # of this step, before any autoreset
        returns.append(new_value / value - 1.0)
        turnover.append(float(info["turnover"]))
        value = new_value
        if after_step is not None:
            after_step(k)
        if dones[0]:
            break
    return np.array(returns), np.array(turnover)


def combine(run: RLRun, state_dir: Path) -> list[dict[str, Any]]:
    """Each agent (its best checkpoint), the ensemble and buy-and-hold on the held-out market."""
    train, evaluation = load_market(run.spec.environment, seed=run.spec.seed)
    spec, env = run.spec, run.spec.environment
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
        norm = envs.train if hasattr(envs.train, "normalize_obs") else None

        def policy(obs: np.ndarray, model: Any = model, norm: Any = norm) -> np.ndarray:
            seen = norm.normalize_obs(obs) if norm is not None else obs
            return np.asarray(model.predict(seen, deterministic=True)[0])

        members.append(Member(agent.name, policy, weight=agent.weight))
    n_symbols = evaluation.num_symbols
    discrete = env.action_space == "discrete"
    hold = np.full((1,), 3**n_symbols - 1) if discrete else np.ones((1, n_symbols), np.float32)
    ppy = bars_per_year(evaluation.timestamps)
    series = {m.name: _episode(evaluation, run, m.policy) for m in members}
    if spec.ensemble is not None:
        ens = RLEnsemble(
            members,
            spec.ensemble.method,
            discrete,
            n_symbols,
            spec.ensemble.performance_window,
            spec.seed,
        )
        member_returns = {m.name: series[m.name][0] for m in members}

        def record(k: int) -> None:
            ens.record(
                [
                    member_returns[m.name][k] if k < len(member_returns[m.name]) else 0.0
                    for m in members
                ]
            )

        series["ensemble"] = _episode(evaluation, run, ens.act, record)
    series["buy_and_hold"] = _episode(evaluation, run, lambda obs: hold)
    rows = []
    for name, (returns, turnover) in series.items():
        perf = performance(returns, returns, np.ones(len(returns)), ppy)
        keep = {k: perf[k] for k in ("total_return", "sharpe", "max_drawdown")}
        mean_turnover = float(turnover.mean()) if len(turnover) else 0.0
        rows.append({"strategy": name, **keep, "turnover": mean_turnover})
    return rows


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
