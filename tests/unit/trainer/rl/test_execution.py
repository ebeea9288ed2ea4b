"""The RL environment under the one execution model: `Market.prices` are the fill prices of
`data.execution`, so with `next_open` a decision made at bar t fills at bar t+1's open and
positions earn open-to-open returns; nothing after bar t+1 is read for a decision at t."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.unit.trainer.rl.markets import env_spec
from tradewind.api.common import Execution
from tradewind.api.rl import RLRunSpec
from tradewind.trainer.data import FeatureTable
from tradewind.trainer.rl import Market, TradingEnvironment, align_feature_table
from tradewind.trainer.rl.run import buy_and_hold, play_episode

N_BARS = 16


def _table(opens: np.ndarray, closes: np.ndarray, features: np.ndarray) -> FeatureTable:
    """One symbol's FeatureTable over daily bars."""
    n_rows = len(closes)
    return FeatureTable(
        symbols=("A",),
        feature_names=("x", "y"),
        offsets=np.array([0, n_rows], dtype=np.int64),
        timestamps=np.datetime64("2022-01-03", "ns") + np.arange(n_rows).astype("timedelta64[D]"),
        values=features.astype(np.float32),
        open=opens,
        close=closes,
        volatility=np.zeros(n_rows, np.float32),
        regimes=np.full(n_rows, -1, np.int8),
    )


def _bars(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Opens, closes and features of N_BARS bars whose opens gap away from the closes."""
    rng = np.random.default_rng(seed)
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, N_BARS)))
    opens = closes * np.exp(rng.normal(0.0, 0.03, N_BARS))
    return opens, closes, rng.normal(size=(N_BARS, 2))


def _market(execution: Execution, seed: int = 0) -> Market:
    return align_feature_table(_table(*_bars(seed)), execution)


def test_market_prices_are_the_fill_prices_of_the_execution_model() -> None:
    opens, closes, _ = _bars()
    np.testing.assert_array_equal(_market("next_open").prices[:, 0], opens)
    np.testing.assert_array_equal(_market("next_close").prices[:, 0], closes)


@pytest.mark.parametrize("execution", ["next_open", "next_close"])
def test_buy_and_hold_equity_follows_the_fill_to_fill_returns(execution: Execution) -> None:
    market = _market(execution)
    environment = env_spec(
        lookback_window=3, episode_length=10, data={"execution": execution}, max_position_size=1.0
    )
    spec = RLRunSpec(environment=environment, agents=[{"name": "a", "algorithm": "ppo"}])
    returns, _ = play_episode(market, spec, buy_and_hold(spec, market))
    opens, closes, _ = _bars()
    fills = opens if execution == "next_open" else closes
    # The whole market is played, not one episodeLength: a step per bar after the window.
    n = len(returns)
    assert n == market.num_bars - 3
    # Step k decides at bar 2 + k: flat through 2 -> 3 (the buy fills at bar 3), then long.
    assert returns[0] == 0.0
    np.testing.assert_allclose(returns[1:], fills[4 : 3 + n] / fills[3 : 2 + n] - 1.0, rtol=1e-12)
    other = closes if execution == "next_open" else opens
    assert not np.allclose(returns[1:], other[4 : 3 + n] / other[3 : 2 + n] - 1.0)


def _episode(market: Market, actions: np.ndarray) -> list[tuple[Any, ...]]:
    """(observation, reward, portfolio value) at the reset and after each step."""
    spec = env_spec(lookback_window=3, episode_length=10, transaction_cost=0.001)
    env = TradingEnvironment(market, spec)
    observation, info = env.reset()
    out: list[tuple[Any, ...]] = [(observation, None, info["portfolio_value"])]
    for action in actions:
        observation, reward, _, _, info = env.step(action)
        out.append((observation, reward, info["portfolio_value"]))
    return out


@pytest.mark.parametrize("bar", [3, 6, 9])
def test_next_open_reads_nothing_after_the_next_open_when_deciding_at_t(bar: int) -> None:
    opens, closes, features = _bars(seed=4)
    actions = np.random.default_rng(5).uniform(-1, 1, (10, 1)).astype(np.float32)
    original = _episode(align_feature_table(_table(opens, closes, features), "next_open"), actions)
    # Change everything a decision at `bar` must not see: bar t+1's close and features, and
    # every price of later bars; the open of bar t+1 (the fill) stays.
    later = np.exp(np.random.default_rng(6).normal(0.0, 0.2, N_BARS))
    moved_opens, moved_closes = opens.copy(), closes.copy()
    moved_opens[bar + 2 :] *= later[bar + 2 :]
    moved_closes[bar + 1 :] *= later[bar + 1 :]
    moved_features = features.copy()
    moved_features[bar + 1 :] += 5.0
    table = _table(moved_opens, moved_closes, moved_features)
    perturbed = _episode(align_feature_table(table, "next_open"), actions)
    step_at_bar = bar - 2  # the reset observes bar 2 (lookback 3); step k observes bar 2 + k
    for before, after in zip(
        original[: step_at_bar + 2], perturbed[: step_at_bar + 2], strict=True
    ):
        assert before[1:] == after[1:]  # rewards and equity of the steps decided at bars <= t
    for before, after in zip(
        original[: step_at_bar + 1], perturbed[: step_at_bar + 1], strict=True
    ):
        np.testing.assert_array_equal(before[0], after[0])  # observations of bars <= t
    # ... the next step sees the change (the test can fail) ...
    assert original[step_at_bar + 2][2] != perturbed[step_at_bar + 2][2]
    # ... and the decision at t fills at bar t+1's open: moving it changes step t's equity.
    fill_moved = opens.copy()
    fill_moved[bar + 1] *= 1.05
    market = align_feature_table(_table(fill_moved, closes, features), "next_open")
    assert _episode(market, actions)[step_at_bar + 1][2] != original[step_at_bar + 1][2]
