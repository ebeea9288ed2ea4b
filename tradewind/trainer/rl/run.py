"""An RLRun end to end: train each agent (one per pod index in a cluster, one after the other
with `tradewind run`), choosing its best checkpoint on the validation market, then combine:
evaluate every agent, the ensemble and buy-and-hold on the test market after costs (bars no
choice of the run has read).

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
from tradewind.api.identity import mlflow_tags
from tradewind.api.rl import EnvironmentSpec, RLRunSpec
from tradewind.extensions import is_extension
from tradewind.trainer import plots
from tradewind.trainer.checkpoint import Checkpointer, CheckpointError
from tradewind.trainer.entrypoint import (
    EXIT_BAD_CONFIG,
    EXIT_DATA_NOT_FOUND,
    EXIT_NON_FINITE_LOSS,
    EXIT_OUT_OF_MEMORY,
    OUT_OF_MEMORY_HINT,
    NonFiniteLossError,
    SpecNotRunnableError,
    checkpoint_uri,
    fail_permanently,
)
from tradewind.trainer.evaluation import bars_per_year, performance
from tradewind.trainer.rl.ensemble import Member, Policy, RLEnsemble
from tradewind.trainer.rl.env import MarketArrays
from tradewind.trainer.rl.extension import build_environment
from tradewind.trainer.rl.market import Market, Markets, load_market
from tradewind.trainer.rl.training import AgentEnvs, make_envs, restore_agent, train_agent
from tradewind.trainer.storage import open_store
from tradewind.trainer.tracking import Tracker, default_tracking_uri, tensorboard_dir
from tradewind.trainer.wandb_run import wandb_run

log = logging.getLogger(__name__)


def checkpoint_base(run: RLRun, state_dir: Path) -> str:
    """The run's own prefix (see `checkpoint_uri`); each agent checkpoints below it."""
    return checkpoint_uri(run, state_dir)


def agent_checkpointer(run: RLRun, state_dir: Path, name: str) -> Checkpointer:
    return Checkpointer(
        open_store(f"{checkpoint_base(run, state_dir)}/agents/{name}"),
        run.spec.checkpoint.keep_last,
    )


def _tracker(run: RLRun, state_dir: Path, role: str) -> Tracker:
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri(state_dir))
    name = f"{run.metadata.name}-{role}"
    tracker = Tracker(
        enabled=True,
        tensorboard_dir=tensorboard_dir(state_dir, name, run.spec.tracking.tensorboard),
        wandb=wandb_run(run.spec.tracking.wandb, state_dir, name, run.metadata),
    )
    tags = mlflow_tags(run, **{"tradewind.role": role})
    params = run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    tracker.start(run.spec.tracking.experiment, name, tags, params)
    return tracker


def run_markets(spec: RLRunSpec) -> Markets:
    """The run's training, validation (eval.split of the bars before the test bars) and test
    (the last eval.test of the bars) markets."""
    return load_market(
        spec.environment,
        seed=spec.seed,
        validation_fraction=spec.eval.split,
        test_fraction=spec.eval.test,
    )


def train_one(run: RLRun, index: int, state_dir: Path, progress_bar: bool = False) -> None:
    """Train (or resume) agent `index` (checkpoints chosen on the validation market), then
    log its reported policy (`reported_agent`: the best checkpoint by validation, the weights
    `combine` evaluates) against buy-and-hold on the validation market (metrics `eval_*` and
    `eval_buy_and_hold_*`) and on the test market (metrics `test_*` and `test_buy_and_hold_*`,
    figure `equity_curve.png`), both in table `evaluation.json`; which weights these are in
    tag `reported_checkpoint` (`best`, or `final` when no checkpoint is ranked) and metric
    `reported_timesteps`."""
    agent = run.spec.agents[index]
    spec = run.spec.for_agent(agent)
    markets = run_markets(spec)
    tracker = _tracker(run, state_dir, agent.name)
    try:
        checkpointer = agent_checkpointer(run, state_dir, agent.name)
        seed = spec.seed + index
        model, envs = train_agent(
            spec, agent, markets, checkpointer, tracker, seed, progress_bar=progress_bar
        )
        final = int(model.num_timesteps)
        reported = reported_agent(run.spec, index, checkpointer, markets)
        if reported is None:  # nothing of this run checkpointed (e.g. resumed at its end)
            reported = ReportedAgent(agent_policy(model, envs), "final", final)
        if reported.checkpoint == "best":
            log.info(
                "agent %s: reporting its best checkpoint by validation (%d of %d timesteps)",
                agent.name, reported.timesteps, final,
            )  # fmt: skip
        else:
            log.warning(
                "agent %s has no best checkpoint (no finite validation reward); reporting its "
                "final model (%d timesteps)",
                agent.name, reported.timesteps,
            )  # fmt: skip
        tracker.tags({"reported_checkpoint": reported.checkpoint})
        tracker.metrics({"reported_timesteps": float(reported.timesteps)}, final)
        _report_agent(tracker, spec, agent.name, reported.policy, markets, final)
        best_reward = checkpointer.best_metric if reported.checkpoint == "best" else None
        if best_reward is not None:
            # the reported checkpoint's validation reward, a step after the last evaluation,
            # so that its latest value (a Sweep's objective, `status`) is the reported one's
            tracker.metrics({"eval_mean_reward": best_reward}, final + 1)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()


@dataclass
class ReportedAgent:
    """The weights an agent is reported with, as its deterministic policy: `checkpoint` is
    `best` (the best checkpoint by validation reward) or `final` (the latest weights, when no
    checkpoint is ranked), `timesteps` their timestep count."""

    policy: Policy
    checkpoint: str
    timesteps: int


def reported_agent(
    spec: RLRunSpec, index: int, checkpointer: Checkpointer, markets: Markets
) -> ReportedAgent | None:
    """Agent `index` of `spec` as both its own report (`train_one`) and `combine` evaluate
    it: restored from its best checkpoint (chosen on the validation market, never the test
    market), else from its latest; None when it has no checkpoint."""
    agent = spec.agents[index]
    agent_spec = spec.for_agent(agent)
    best = checkpointer.best_step
    state = checkpointer.load(best) if best is not None else checkpointer.load_latest()
    if state is None:
        return None
    envs = make_envs(agent_spec, markets.train, markets.validation, seed=spec.seed)
    try:
        model = restore_agent(agent, state, envs, "cpu", seed=spec.seed + index)
    except CheckpointError as err:
        where = checkpointer.loaded_uri or checkpointer.store.uri("")
        raise type(err)(f"agent {agent.name}: {where}: {err}") from err
    checkpoint = "best" if best is not None else "final"
    return ReportedAgent(agent_policy(model, envs), checkpoint, int(model.num_timesteps))


def _report_agent(
    tracker: Tracker, spec: RLRunSpec, name: str, policy: Policy, markets: Markets, step: int
) -> None:
    """The agent and buy-and-hold on the validation market (metrics `eval_<metric>` and
    `eval_buy_and_hold_<metric>`) and on the test market (`test_<metric>`,
    `test_buy_and_hold_<metric>`, and the equity curves); every row, tagged with its market,
    in `evaluation.json`."""
    validation = against_buy_and_hold(spec, name, policy, markets.validation)
    test = against_buy_and_hold(spec, name, policy, markets.test)
    metrics: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    for prefix, market_name, market, series in (
        ("eval", "validation", markets.validation, validation),
        ("test", "test", markets.test, test),
    ):
        agent_row, hold_row = strategy_rows(series, market)
        metrics |= _row_metrics(agent_row, prefix)
        metrics |= _row_metrics(hold_row, f"{prefix}_{BUY_AND_HOLD}")
        table += [{"market": market_name, **row} for row in (agent_row, hold_row)]
    tracker.metrics(metrics, step)
    tracker.table(table, "evaluation.json")
    _log_figure(
        tracker,
        plots.equity_curves(
            {key: returns for key, (returns, _) in test.items()},
            title=f"Equity on test bars after costs: {name} vs buy-and-hold",
            xlabel="step (test bars)",
        ),
        "equity_curve.png",
    )


def against_buy_and_hold(
    spec: RLRunSpec, name: str, policy: Policy, market: Market
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-step returns and turnover of `policy` (as `name`) and of buy-and-hold over one
    deterministic pass of `market`."""
    return {
        name: play_episode(market, spec, policy),
        BUY_AND_HOLD: play_episode(market, spec, buy_and_hold(spec, market)),
    }


BUY_AND_HOLD = "buy_and_hold"


def _log_figure(tracker: Tracker, figure: Any, name: str) -> None:
    import matplotlib.pyplot as plt

    tracker.figure(figure, name)
    plt.close(figure)


def _row_metrics(row: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every figure of a strategy row as `<prefix>_<figure>` (with the Sharpe ratio's
    statistics under the names `SharpeStats.from_metrics(metrics, prefix)` reads)."""
    return {f"{prefix}_{key}": float(value) for key, value in row.items() if key != "strategy"}


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
    """One deterministic pass over all of `market`, from its first bar to its last (not just
    one `episodeLength`: every bar of a test market counts): per-step returns and turnover
    after costs, from Tradewind's accounting whatever `environment.type` (an extension's
    environment only shapes rewards and observations)."""
    from tradewind.trainer.rl.vec_env import BatchedTradingEnv

    whole = market.num_bars - spec.environment.lookback_window
    env_spec = spec.environment.model_copy(update={"episode_length": whole})
    if is_extension(env_spec.type):
        return _play_extension_episode(market, env_spec, spec.seed, act, after_step)
    env = BatchedTradingEnv(market, env_spec, 1, seed=spec.seed, random_start=False)
    obs = env.reset()
    value, returns, turnover = spec.environment.initial_balance, [], []
    for k in range(whole):
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


def _play_extension_episode(
    market: Market,
    env_spec: EnvironmentSpec,
    seed: int,
    act: Policy,
    after_step: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`play_episode` in an extension's environment, stepped as a batch of one (the policy
    sees (1, ...) observations as from a vector environment); returns and turnover from the
    infos of TradingEnvironment.step, which an extension cannot override."""
    env = build_environment(market, env_spec, seed=seed, random_start=False)
    obs, _ = env.reset(seed=seed)
    value, returns, turnover = env_spec.initial_balance, [], []
    for k in range(env_spec.episode_length):
        action = np.asarray(act(np.asarray(obs)[None]))[0]
        obs, _, terminated, truncated, info = env.step(action)
        new_value = float(info["portfolio_value"])
        returns.append(new_value / value - 1.0)
        turnover.append(float(info["turnover"]))
        value = new_value
        if after_step is not None:
            after_step(k)
        if terminated or truncated:
            break
    return np.array(returns), np.array(turnover)


def strategy_rows(
    series: dict[str, tuple[np.ndarray, np.ndarray]], market: Market
) -> list[dict[str, Any]]:
    """Each strategy's episode: every figure of `performance` on its per-step returns (total
    return, annualised Sharpe with its interval and PSR, max drawdown, ...), with `turnover`
    the mean traded weight per step."""
    ppy = bars_per_year(market.timestamps)
    rows = []
    for name, (returns, turnover) in series.items():
        perf = performance(returns, returns, np.ones(len(returns)), ppy)
        mean_turnover = float(turnover.mean()) if len(turnover) else 0.0
        rows.append({"strategy": name, **perf, "turnover": mean_turnover})
    return rows


@dataclass
class EnsembleTrace:
    """What the ensemble did at each step of its episode: every member's target weights
    [steps, members, symbols], its own [steps, symbols], the members' disagreement and
    their weights as shares [steps, members] at each decision."""

    members: list[str]
    member_weights: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)
    shares: list[np.ndarray] = field(default_factory=list)

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


def play_ensemble(
    market: Market, spec: RLRunSpec, ens: RLEnsemble
) -> tuple[tuple[np.ndarray, np.ndarray], EnsembleTrace]:
    """The ensemble's episode on `market` (see `play_episode`) and its trace. After step k
    the ensemble observes the per-symbol returns of the bar the step moved to (first bar +
    k + 1), the bar its next decision observes: it learns from closed bars only."""
    arrays = MarketArrays.build(market, spec.environment)
    trace = EnsembleTrace([m.name for m in ens.members])

    def record(k: int) -> None:
        trace.member_weights.append(ens.last_weights[:, 0, :])
        trace.weights.append(ens.last_combined[0])
        trace.uncertainty.append(float(ens.last_uncertainty[0]))
        trace.shares.append(ens.last_shares)
        ens.observe(arrays.returns[arrays.first_bar + k + 1])

    return play_episode(market, spec, ens.act, record), trace


def combine(run: RLRun, state_dir: Path) -> list[dict[str, Any]]:
    """Each agent (its best checkpoint, chosen on the validation market), the ensemble and
    buy-and-hold on the test market; logged to MLflow (role `combine`): the table,
    `<strategy>_<metric>` metrics, the equity curves and, with `ensemble.uncertainty`, the
    members' disagreement per step and its plot."""
    markets = run_markets(run.spec)
    evaluation = markets.test
    spec = run.spec
    members: list[Member] = []
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for index, agent in enumerate(spec.agents):
        agent_spec = spec.for_agent(agent)
        checkpointer = agent_checkpointer(run, state_dir, agent.name)
        reported = reported_agent(spec, index, checkpointer, markets)
        if reported is None:
            raise FileNotFoundError(
                f"agent {agent.name} has no checkpoint in {checkpoint_base(run, state_dir)}"
            )
        discrete = agent_spec.environment.action_space == "discrete"
        policy = reported.policy
        members.append(Member(agent.name, policy, weight=agent.weight, discrete=discrete))
        series[agent.name] = play_episode(evaluation, agent_spec, policy)
    trace: EnsembleTrace | None = None
    together = spec.for_ensemble()
    if spec.ensemble is not None:
        env = together.environment
        ens = RLEnsemble.from_spec(
            members, spec.ensemble, env.action_space == "discrete", evaluation.num_symbols,
            spec.seed, cost_rate=env.transaction_cost + env.slippage,
        )  # fmt: skip
        series["ensemble"], trace = play_ensemble(evaluation, together, ens)
    hold = buy_and_hold(together, evaluation)
    series[BUY_AND_HOLD] = play_episode(evaluation, together, hold)
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
            title="Equity on test bars after costs: agents, ensemble, buy-and-hold",
            xlabel="step (test bars)",
        ),
        "equity_curves.png",
    )
    if trace is not None and trace.uncertainty:
        metrics |= trace.metrics()
        log_series(tracker, "ensemble_uncertainty", trace.uncertainty)
        for i, name in enumerate(trace.members):  # how re-weighting moved each member's share
            log_series(tracker, f"ensemble_share_{name}", [float(s[i]) for s in trace.shares])
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
    from tradewind.extensions import validation_context

    try:
        resources = load_resources(args.config, validation_context())
    except ManifestError as exc:
        return fail_permanently(EXIT_BAD_CONFIG, f"error: {exc}")
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
        return fail_permanently(EXIT_DATA_NOT_FOUND, f"error: data: {exc}")
    except NonFiniteLossError as exc:
        return fail_permanently(EXIT_NON_FINITE_LOSS, f"error: {exc}")
    except CheckpointError as exc:  # corrupt, pickled or not this spec's: a restart cannot help
        return fail_permanently(EXIT_BAD_CONFIG, f"error: checkpoint: {exc}")
    except SpecNotRunnableError as exc:  # e.g. an extension's environment breaks its contract
        return fail_permanently(EXIT_BAD_CONFIG, f"error: {exc}")
    except MemoryError:
        return fail_permanently(EXIT_OUT_OF_MEMORY, f"error: out of memory: {OUT_OF_MEMORY_HINT}")
    return 0
