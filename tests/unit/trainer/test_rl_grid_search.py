"""The in-process grid search over an agent's hyperparameters (`tradewind rl grid-search`):
parsing the grid, refusing bad grids before training, training and ranking every
combination for real (tiny timesteps)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.unit.trainer.rl.markets import random_market
from tradewind.api.rl import RLRunSpec
from tradewind.cli import app
from tradewind.trainer.rl import grid_search as gs
from tradewind.trainer.rl.agents import build_agent
from tradewind.trainer.rl.market import split_market

PPO = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "net_arch": [8]}


def _spec(agents: list[dict[str, Any]] | None = None) -> RLRunSpec:
    return RLRunSpec.model_validate(
        {
            "environment": {
                "lookbackWindow": 3,
                "episodeLength": 20,
                "actionSpace": "continuous",
                "randomStart": True,
            },
            "agents": agents or [{"name": "ppo", "algorithm": "ppo", "hyperparameters": PPO}],
            "nEnvs": 2,
            "eval": {"episodes": 1},
        }
    )


def _markets(spec: RLRunSpec):  # type: ignore[no-untyped-def]
    market = random_market(n_bars=120, seed=3)
    return split_market(market, spec.environment, 0.2, 0.2)


def test_params_parse_numbers_booleans_and_bracketed_lists() -> None:
    grid = gs.parse_grid(
        [
            "learning_rate=1e-4, 3e-4",
            "n_steps=16,32",
            "net_arch=[64,64],[32]",
            "normalize_advantage=true,false",
            "activation_fn=tanh,relu",
        ]
    )
    assert grid == {
        "learning_rate": [1e-4, 3e-4],
        "n_steps": [16, 32],
        "net_arch": [[64, 64], [32]],
        "normalize_advantage": [True, False],
        "activation_fn": ["tanh", "relu"],
    }
    assert isinstance(grid["n_steps"][0], int) and isinstance(grid["learning_rate"][0], float)
    assert gs.combinations({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["learning_rate"], "expected NAME=VALUE"),
        (["gamma="], "expected NAME=VALUE"),
        (["gamma=0.9", "gamma=0.99"], "given twice"),
        (["net_arch=[64,"], "not a list"),
        (["gamma=0.9,"], "empty value"),
    ],
)
def test_malformed_params_are_refused(params: list[str], message: str) -> None:
    with pytest.raises(gs.GridError, match=message):
        gs.parse_grid(params)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"tau": [0.01]}, "tau: not a ppo hyperparameter; allowed: .*batch_size"),
        ({"gamma": [0.9, 1.5]}, r"gamma=1.5: Input should be less than or equal to 1"),
        ({"net_arch": [[0]]}, r"net_arch.0=\[0\]: Input should be greater than or equal to 1"),
        ({"learning_rate": [1e-3] * 40, "gamma": [0.9] * 30}, "1200 combinations"),
        ({}, "the grid is empty"),
    ],
)
def test_bad_grids_are_refused_before_any_training(
    grid: dict[str, list[Any]], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained a bad grid")

    monkeypatch.setattr(gs, "evaluate_trial", no_training)
    spec = _spec()
    with pytest.raises(gs.GridError, match=message):
        gs.grid_search(spec, grid, markets=_markets(spec))


def test_the_agent_must_be_named_when_the_run_has_several() -> None:
    spec = _spec([{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "a2c"}])
    with pytest.raises(gs.GridError, match="several agents"):
        gs.grid_search(spec, {"gamma": [0.9]}, markets=_markets(spec))
    with pytest.raises(gs.GridError, match="no agent 'c'"):
        gs.grid_search(spec, {"gamma": [0.9]}, agent="c", markets=_markets(spec))
    with pytest.raises(gs.GridError, match="score 'loss'"):
        gs.grid_search(spec, {"gamma": [0.9]}, agent="a", score="loss")


def test_every_combination_trains_with_its_values_and_is_ranked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[dict[str, Any]] = []
    build = build_agent

    def spy(agent, env, seed, device="auto"):  # type: ignore[no-untyped-def]
        model: Any = build(agent, env, seed=seed, device=device)
        built.append(
            {
                "learning_rate": model.learning_rate,
                "gamma": model.gamma,
                "n_steps": model.n_steps,
                "net_arch": model.policy_kwargs["net_arch"],
            }
        )
        return model

    monkeypatch.setattr(gs, "build_agent", spy)
    spec = _spec()
    seen: list[int] = []
    result = gs.grid_search(
        spec,
        {"learning_rate": [1e-4, 3e-3], "gamma": [0.9, 0.99]},
        timesteps=64,
        markets=_markets(spec),
        on_trial=lambda i, n, row: seen.append(i),
    )
    assert seen == [0, 1, 2, 3]
    # Each trial's SB3 model got its combination laid over the agent's own hyperparameters.
    assert [(b["learning_rate"], b["gamma"]) for b in built] == [
        (1e-4, 0.9),
        (1e-4, 0.99),
        (3e-3, 0.9),
        (3e-3, 0.99),
    ]
    assert all(b["n_steps"] == 16 and b["net_arch"] == [8] for b in built)
    assert len(result.rows) == 4
    assert sorted(tuple(r["params"].values()) for r in result.rows) == [
        (1e-4, 0.9),
        (1e-4, 0.99),
        (3e-3, 0.9),
        (3e-3, 0.99),
    ]
    sharpes = [r["sharpe"] for r in result.rows]
    assert sharpes == sorted(sharpes, reverse=True)
    assert result.best == result.rows[0]["params"]
    for row in result.rows:
        assert all(math.isfinite(row[m]) for m in (*gs.METRICS, *gs.TEST_METRICS))
        assert row["max_drawdown"] >= 0 and row["turnover"] >= 0
    assert set(result.baseline) == {*gs.TRADING_METRICS, *gs.TEST_METRICS}
    assert result.best_test == {m: result.rows[0][m] for m in gs.TEST_METRICS}
    assert (result.agent, result.algorithm, result.timesteps, result.seeds) == ("ppo", "ppo", 64, 1)


def test_the_ranking_reads_the_validation_bars_and_never_the_test_bars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def scored(*args: Any) -> dict[str, float]:
        gamma = float(args[1].hyperparameters["gamma"])
        validation = dict.fromkeys(gs.METRICS, gamma)
        return validation | dict.fromkeys(gs.TEST_METRICS, -gamma)  # test disagrees

    monkeypatch.setattr(gs, "evaluate_trial", scored)
    spec = _spec()
    result = gs.grid_search(spec, {"gamma": [0.9, 0.99, 0.95]}, markets=_markets(spec))
    assert [r["params"]["gamma"] for r in result.rows] == [0.99, 0.95, 0.9]
    assert result.best_test["test_sharpe"] == -0.99
    assert "test bars" in gs.best_summary(result) and "-99.00%" in gs.best_summary(result)


def test_identical_combinations_score_identically_and_seeds_average() -> None:
    spec = _spec()
    markets = _markets(spec)
    result = gs.grid_search(
        spec, {"gamma": [0.95, 0.95]}, timesteps=32, markets=markets, score="eval_mean_reward"
    )
    first, second = ({k: r[k] for k in gs.METRICS} for r in result.rows)
    assert first == second  # seeded: the same combination trains the same agent
    two_seeds = gs.grid_search(spec, {"gamma": [0.95]}, timesteps=32, seeds=2, markets=markets)
    agent = spec.agents[0].model_copy(update={"hyperparameters": {**PPO, "gamma": 0.95}})
    one = gs.evaluate_trial(spec, agent, markets, 32, spec.seed)
    other = gs.evaluate_trial(spec, agent, markets, 32, spec.seed + 1)
    assert one != other
    assert two_seeds.rows[0]["sharpe"] == pytest.approx((one["sharpe"] + other["sharpe"]) / 2)
    assert "sharpe_std" in two_seeds.rows[0]


def test_cli_grid_search_on_bundled_bars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "cache"))
    manifest = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": {"name": "grid"},
        "spec": {
            "environment": {
                "data": {"source": "stocks", "symbols": ["AAPL"]},
                "actionSpace": "discrete",
                "episodeLength": 40,
            },
            "agents": [
                {"name": "a2c", "algorithm": "a2c", "hyperparameters": {"net_arch": [8]}},
                {"name": "dqn", "algorithm": "dqn"},
            ],
            "totalTimesteps": 40,
            "nEnvs": 2,
            "eval": {"episodes": 1},
        },
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "grid.json"
    args = [
        "rl",
        "grid-search",
        "-f",
        str(config),
        "--agent",
        "a2c",
        "-p",
        "n_steps=4,8",
        "--param",
        "net_arch=[8],[4,4]",
        "--score",
        "total_return",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[4/4] n_steps=8 net_arch=[4, 4]: total_return" in result.output
    written = json.loads(out.read_text())
    assert written["agent"] == "a2c" and written["score"] == "total_return"
    assert written["timesteps"] == 40 and len(written["rows"]) == 4
    returns = [r["total_return"] for r in written["rows"]]
    assert returns == sorted(returns, reverse=True)
    assert written["best"] == written["rows"][0]["params"]
    assert written["best_test"]["test_sharpe"] == written["rows"][0]["test_sharpe"]
    assert "deflated Sharpe" in result.output
    snippet = result.output.split("(add to the agent in the RLRun):")[1].split("wrote")[0]
    assert yaml.safe_load(snippet) == {"hyperparameters": written["best"]}

    bad = CliRunner().invoke(app, [*args[:6], "-p", "tau=0.1"])
    assert bad.exit_code == 1
    assert "tau: not a a2c hyperparameter" in bad.output


def test_the_best_is_deflated_for_the_combinations_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    from tradewind.significance import SharpeStats, probabilistic_sharpe_ratio

    def scored(*args: Any) -> dict[str, float]:
        sharpe = 1000 * float(args[1].hyperparameters["learning_rate"])
        stats = SharpeStats(sharpe, 0.0, 0.0, 0.0, 250, 252.0, 0.0, 3.0).as_metrics()
        row = {"eval_mean_reward": 0.0, "total_return": 0.0, "max_drawdown": 0.0}
        row |= {"turnover": 0.0, **stats}
        return row | {f"test_{k}": v for k, v in row.items() if k != "eval_mean_reward"}

    monkeypatch.setattr(gs, "evaluate_trial", scored)
    spec = _spec()
    markets = _markets(spec)
    one = gs.grid_search(spec, {"learning_rate": [2e-3]}, markets=markets)
    many = gs.grid_search(
        spec, {"learning_rate": [5e-4, 1e-3, 1.5e-3, 2e-3, 1e-4, 8e-4]}, markets=markets
    )
    assert one.rows[0]["sharpe"] == many.rows[0]["sharpe"] == 2.0
    plain = probabilistic_sharpe_ratio(2.0 / 252**0.5, 250, 0.0, 3.0)
    assert one.deflated_sharpe == pytest.approx(plain)
    assert many.deflated_sharpe is not None and many.deflated_sharpe < plain - 0.05
    assert "deflated Sharpe" in gs.best_summary(many)
    assert many.to_json()["best_deflated_sharpe"] == many.deflated_sharpe


def test_sacs_auto_entropy_coefficient_is_a_grid_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's grid: ent_coef over 0.01, 0.1 and 'auto' (SAC learns it)."""
    learned: list[bool] = []
    build = build_agent

    def spy(agent, env, seed, device="auto"):  # type: ignore[no-untyped-def]
        model: Any = build(agent, env, seed=seed, device=device)
        learned.append(model.ent_coef_optimizer is not None)
        return model

    monkeypatch.setattr(gs, "build_agent", spy)
    sac = {"net_arch": [8], "learning_starts": 8, "batch_size": 8}
    spec = _spec([{"name": "sac", "algorithm": "sac", "hyperparameters": sac}])
    grid = gs.parse_grid(["ent_coef=0.1,auto"])
    result = gs.grid_search(spec, grid, timesteps=32, markets=_markets(spec))
    assert learned == [False, True]
    assert sorted(gs.format_value(r["params"]["ent_coef"]) for r in result.rows) == ["0.1", "null"]
    with pytest.raises(gs.GridError, match="only sac learns"):
        gs.grid_search(_spec(), gs.parse_grid(["ent_coef=auto"]), markets=_markets(spec))
