"""In-process grid search over one agent's hyperparameters: the quick study of the training
guide, before a Sweep takes over at scale.

Every combination of the grid (rl-zoo3 / SB3 names, e.g. learning_rate, gamma, n_steps,
batch_size, tau, ent_coef, net_arch) is laid over the agent's own hyperparameters, trained
for `timesteps` on the run's training market (its batched env, VecNormalize, n_envs, seed)
and scored on the validation market: SB3's `evaluate_policy` mean episode reward over
`eval.episodes`, and a deterministic pass over the validation bars after costs (total return,
annualised Sharpe, max drawdown, turnover), averaged over `seeds` seeds. The ranking reads
only these; the same pass over the test bars (`test_*`, never used to rank) is reported
beside them, so the best row's test figures say what the choice is worth on bars it did not
see. Nothing is checkpointed or tracked: the result is a table sorted by the score, best
first, and the best combination, to copy into the RLRun.

    tradewind rl grid-search -f run.yaml --agent ppo \\
        --param learning_rate=1e-4,3e-4 --param gamma=0.95,0.99 --timesteps 20000
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tradewind.api.hyperparameters import HYPERPARAMETERS, hyperparameter_errors
from tradewind.api.rl import AgentSpec, RLRunSpec
from tradewind.significance import METRIC_KEYS, SharpeStats, deflated_sharpe_ratio
from tradewind.trainer.rl.agents import build_agent
from tradewind.trainer.rl.market import Markets
from tradewind.trainer.rl.run import (
    BUY_AND_HOLD,
    agent_policy,
    buy_and_hold,
    play_episode,
    run_markets,
    strategy_rows,
)
from tradewind.trainer.rl.training import evaluation_reward, make_envs

Score = Literal["sharpe", "total_return", "eval_mean_reward"]
SCORES: tuple[Score, ...] = ("sharpe", "total_return", "eval_mean_reward")
TRADING_METRICS = ("total_return", "max_drawdown", "turnover", *METRIC_KEYS)
"""Returns, drawdown, turnover and the Sharpe ratio with its significance (SharpeStats)."""
METRICS = ("eval_mean_reward", *TRADING_METRICS)
"""Scored on the validation market; the ranking reads these."""
TEST_METRICS = tuple(f"test_{m}" for m in TRADING_METRICS)
"""The same pass over the test market, reported beside and never ranked on."""
MAX_COMBINATIONS = 1000
"""More than this is a Sweep's job."""


class GridError(ValueError):
    """A grid that cannot run: unknown parameter, bad value, no such agent."""


def parse_value(text: str) -> Any:
    """One grid value: int, float (1e-4 too), true/false, null, a JSON list ([64,64]), or
    the text itself."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise GridError(f"{text!r}: not a list ({exc.msg})") from None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: `[64,64],[32,32]` is two values."""
    parts: list[str] = []
    depth, current = 0, list[str]()
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return parts


def parse_param(text: str) -> tuple[str, list[Any]]:
    """`name=v1,v2,...` -> (name, [values])."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise GridError(f"{text!r}: expected NAME=VALUE[,VALUE...], e.g. learning_rate=1e-4,3e-4")
    parsed = [parse_value(v) for v in _split_top_level(values)]
    if any(isinstance(v, str) and not v for v in parsed):
        raise GridError(f"{text!r}: empty value")
    return name, parsed


def parse_grid(params: Sequence[str]) -> dict[str, list[Any]]:
    """Repeated `--param NAME=V1,V2` options -> {name: values} (a name given twice is an
    error)."""
    grid: dict[str, list[Any]] = {}
    for text in params:
        name, values = parse_param(text)
        if name in grid:
            raise GridError(f"{name}: given twice")
        grid[name] = values
    return grid


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (the last parameter varies fastest)."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def pick_agent(spec: RLRunSpec, name: str | None) -> AgentSpec:
    """The agent named `name`, or the run's only agent."""
    if name is None:
        if len(spec.agents) > 1:
            names = ", ".join(a.name for a in spec.agents)
            raise GridError(f"the run has several agents ({names}): choose one with --agent")
        return spec.agents[0]
    for agent in spec.agents:
        if agent.name == name:
            return agent
    raise GridError(f"no agent {name!r} in the run ({', '.join(a.name for a in spec.agents)})")


def learned_ent_coef(
    agent: AgentSpec, grid: Mapping[str, Sequence[Any]]
) -> dict[str, Sequence[Any]]:
    """SAC's `ent_coef=...,auto` (the guide's grid: 0.01, 0.1, auto): `auto` is ent_coef
    unset (null), which SAC learns, as SB3's 'auto' does."""
    values = grid.get("ent_coef")
    if agent.algorithm != "sac" or values is None:
        return dict(grid)
    return {**grid, "ent_coef": [None if v == "auto" else v for v in values]}


def check_grid(agent: AgentSpec, grid: Mapping[str, Sequence[Any]]) -> None:
    """Refuse, before any training, a grid with an unknown name or a value the agent's
    algorithm does not take (each combination is validated as the RLRun would be)."""
    if not grid:
        raise GridError("the grid is empty: give at least one --param NAME=V1,V2")
    allowed = HYPERPARAMETERS[agent.algorithm].model_fields
    for name, values in grid.items():
        if name not in allowed:
            raise GridError(
                f"{name}: not a {agent.algorithm} hyperparameter; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        if not values:
            raise GridError(f"{name}: no values")
    count = math.prod(len(v) for v in grid.values())
    if count > MAX_COMBINATIONS:
        raise GridError(f"{count} combinations (at most {MAX_COMBINATIONS}): use a Sweep")
    for combination in combinations(grid):
        errors = hyperparameter_errors(agent.algorithm, {**agent.hyperparameters, **combination})
        if errors:
            key, problem = errors[0]
            raise GridError(f"{key}={combination.get(key.split('.')[0])!r}: {problem}")


@dataclass
class GridSearchResult:
    agent: str
    algorithm: str
    score: Score
    timesteps: int
    seeds: int
    rows: list[dict[str, Any]]
    """One per combination, best (on validation) first: {"params": {...}, metric: mean over
    seeds, ... (METRICS on validation, TEST_METRICS on test), "seconds": training +
    evaluation time}."""
    baseline: dict[str, Any]
    """Buy-and-hold on the same validation bars (total_return, sharpe, max_drawdown,
    turnover) and test bars (test_total_return, ...)."""

    @property
    def best(self) -> dict[str, Any]:
        """The best combination's hyperparameters (only the searched ones)."""
        params: dict[str, Any] = self.rows[0]["params"]
        return params

    @property
    def best_test(self) -> dict[str, float]:
        """The best combination's figures on the test market (TEST_METRICS)."""
        return {m: float(self.rows[0][m]) for m in TEST_METRICS}

    @property
    def deflated_sharpe(self) -> float | None:
        """The Deflated Sharpe Ratio of the best combination's validation Sharpe ratio, given
        every combination tried: the probability that it is more than the luck of picking
        the best of that many (None without the statistics)."""
        best = SharpeStats.from_metrics(self.rows[0]) if self.rows else None
        if best is None:
            return None
        return deflated_sharpe_ratio(best, [float(r["sharpe"]) for r in self.rows])

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "algorithm": self.algorithm,
            "score": self.score,
            "timesteps": self.timesteps,
            "seeds": self.seeds,
            "best": self.best,
            "best_test": self.best_test,
            "best_deflated_sharpe": self.deflated_sharpe,
            "rows": self.rows,
            "buy_and_hold": self.baseline,
        }


def _sort_key(score: Score) -> Callable[[dict[str, Any]], tuple[bool, float]]:
    def key(row: dict[str, Any]) -> tuple[bool, float]:
        value = float(row[score])
        return (math.isnan(value), -value if not math.isnan(value) else 0.0)

    return key


def evaluate_trial(
    spec: RLRunSpec, agent: AgentSpec, markets: Markets, timesteps: int, seed: int,
    device: str = "cpu",
) -> dict[str, float]:  # fmt: skip
    """Train `agent` for `timesteps` from scratch and score it on the validation market
    (METRICS) and the test market (TEST_METRICS), in its action space."""
    spec = spec.for_agent(agent)
    envs = make_envs(spec, markets.train, markets.validation, seed=seed)
    model = build_agent(agent, envs.train, seed=seed, device=device)
    model.learn(timesteps)
    scores = {"eval_mean_reward": evaluation_reward(model, envs, spec)}
    policy = agent_policy(model, envs)
    for prefix, market in (("", markets.validation), ("test_", markets.test)):
        (row,) = strategy_rows({agent.name: play_episode(market, spec, policy)}, market)
        scores |= {f"{prefix}{k}": float(row[k]) for k in TRADING_METRICS}
    return scores


def grid_search(
    spec: RLRunSpec,
    grid: Mapping[str, Sequence[Any]],
    agent: str | None = None,
    timesteps: int | None = None,
    seeds: int = 1,
    score: str = "sharpe",
    markets: Markets | None = None,
    on_trial: Callable[[int, int, dict[str, Any]], None] | None = None,
    device: str = "cpu",
) -> GridSearchResult:
    """Train and score every combination of `grid` for the agent (see the module docstring),
    ranked on the validation market; `timesteps` defaults to spec.totalTimesteps; seeds
    spec.seed .. spec.seed + seeds - 1; `markets` (train, validation, test) defaults to the
    run's data; `on_trial(i, n, row)` after each."""
    if score not in SCORES:
        raise GridError(f"score {score!r}: one of {', '.join(SCORES)}")
    ranked_by: Score = score
    if seeds < 1:
        raise GridError("seeds must be at least 1")
    chosen = pick_agent(spec, agent)
    grid = learned_ent_coef(chosen, grid)
    check_grid(chosen, grid)
    budget = spec.total_timesteps if timesteps is None else timesteps
    if budget < 1:
        raise GridError("timesteps must be at least 1")
    if markets is None:
        markets = run_markets(spec)
    trials = combinations(grid)
    rows: list[dict[str, Any]] = []
    for i, params in enumerate(trials):
        trial_agent = chosen.model_copy(
            update={"hyperparameters": {**chosen.hyperparameters, **params}}
        )
        start = time.perf_counter()
        scores = [
            evaluate_trial(spec, trial_agent, markets, budget, spec.seed + k, device)
            for k in range(seeds)
        ]
        row: dict[str, Any] = {"params": params}
        for metric in (*METRICS, *TEST_METRICS):
            row[metric] = float(np.mean([s[metric] for s in scores]))
        if seeds > 1:
            row[f"{score}_std"] = float(np.std([s[score] for s in scores]))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if on_trial is not None:
            on_trial(i, len(trials), row)
    rows.sort(key=_sort_key(ranked_by))
    baseline = buy_and_hold_baseline(spec, markets)
    return GridSearchResult(chosen.name, chosen.algorithm, ranked_by, budget, seeds, rows, baseline)


def buy_and_hold_baseline(spec: RLRunSpec, markets: Markets) -> dict[str, float]:
    """Buy-and-hold's TRADING_METRICS on the validation market, and as TEST_METRICS on the
    test market."""
    baseline: dict[str, float] = {}
    for prefix, market in (("", markets.validation), ("test_", markets.test)):
        hold = play_episode(market, spec, buy_and_hold(spec, market))
        (row,) = strategy_rows({BUY_AND_HOLD: hold}, market)
        baseline |= {f"{prefix}{k}": float(row[k]) for k in TRADING_METRICS}
    return baseline


def trial_line(i: int, n: int, row: dict[str, Any], score: str) -> str:
    """`[i+1/n] name=value ...: score value (seconds)`, after each combination."""
    params = " ".join(f"{k}={format_value(v)}" for k, v in row["params"].items())
    return f"[{i + 1}/{n}] {params}: {score} {row[score]:.4g} ({row['seconds']:.1f} s)"


def format_value(value: Any) -> str:
    """A grid value as given on the command line (lists as JSON; unset as null)."""
    return json.dumps(value) if isinstance(value, list | type(None)) else str(value)


TABLE_COLUMNS = (
    ("eval rew", "eval_mean_reward", "{:.4g}"),
    ("return", "total_return", "{:+.2%}"),
    ("Sharpe", "sharpe", "{:.2f}"),
    ("max DD", "max_drawdown", "{:.2%}"),
    ("turn", "turnover", "{:.3f}"),
    ("test return", "test_total_return", "{:+.2%}"),
    ("test Sharpe", "test_sharpe", "{:.2f}"),
    ("test max DD", "test_max_drawdown", "{:.2%}"),
)
"""(header, row key, format) of the figures in `result_table`."""


def _cells(row: dict[str, Any]) -> list[str]:
    return [form.format(row[key]) if key in row else "" for _, key, form in TABLE_COLUMNS]


def result_table(result: GridSearchResult) -> Any:
    """A rich Table of the result, best (on validation) first, with the test figures beside
    and buy-and-hold as the last line."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"{result.agent} ({result.algorithm}), {result.timesteps} timesteps x "
        f"{result.seeds} seed(s), after costs: ranked by {result.score} on the validation "
        "bars; test bars beside, never ranked on",
        box=box.SIMPLE_HEAD,
    )
    names = list(result.rows[0]["params"]) if result.rows else []
    table.add_column("#", justify="right")
    for name in names:
        table.add_column(name, min_width=min(len(name), 16))
    for header, _, _ in TABLE_COLUMNS:
        table.add_column(header, justify="right")
    for rank, row in enumerate(result.rows, 1):
        table.add_row(str(rank), *(format_value(row["params"][n]) for n in names), *_cells(row))
    label = ["buy-and-hold"] + [""] * (len(names) - 1) if names else []
    table.add_row("", *label, *_cells(result.baseline))
    return table


def best_summary(result: GridSearchResult) -> str:
    """The best combination: its validation Sharpe ratio deflated for the combinations tried,
    and its figures on the test bars (interval and PSR) against buy-and-hold's."""
    best, hold, row = result.best_test, result.baseline, result.rows[0]
    deflated = result.deflated_sharpe
    dsr = "n/a" if deflated is None else f"{deflated:.2f}"
    return (
        f"best on validation: Sharpe {row['sharpe']:.2f} [{row['sharpe_ci_low']:.2f}, "
        f"{row['sharpe_ci_high']:.2f}], deflated Sharpe {dsr} over {len(result.rows)} "
        f"combination(s); on the test bars: return {best['test_total_return']:+.2%}, "
        f"Sharpe {best['test_sharpe']:.2f} [{best['test_sharpe_ci_low']:.2f}, "
        f"{best['test_sharpe_ci_high']:.2f}], PSR {best['test_psr']:.2f}, "
        f"max DD {best['test_max_drawdown']:.2%} "
        f"(buy-and-hold {hold['test_total_return']:+.2%}, Sharpe {hold['test_sharpe']:.2f})"
    )
