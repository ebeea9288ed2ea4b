"""Tiny hand-made markets and environment specs for the RL tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.rl import Market


def market_from_prices(prices: Any, n_features: int = 2, seed: int = 0) -> Market:
    """A Market over `prices` (T, S) with random features and daily timestamps."""
    closes = np.asarray(prices, dtype=np.float64)
    if closes.ndim == 1:
        closes = closes[:, None]
    n_bars, n_symbols = closes.shape
    features = np.random.default_rng(seed).normal(size=(n_bars, n_symbols, n_features))
    return Market(
        features=features.astype(np.float32),
        prices=closes,
        timestamps=np.datetime64("2020-01-01") + np.arange(n_bars).astype("timedelta64[D]"),
        symbols=tuple(f"S{i}" for i in range(n_symbols)),
        feature_names=tuple(f"f{j}" for j in range(n_features)),
    )


def random_market(
    n_bars: int = 60, n_symbols: int = 2, volatility: float = 0.02, seed: int = 0
) -> Market:
    """A random-walk market."""
    rng = np.random.default_rng(seed)
    prices = 100.0 * np.exp(np.cumsum(rng.normal(0.0, volatility, (n_bars, n_symbols)), axis=0))
    return market_from_prices(prices, seed=seed + 1)


def env_spec(**settings: Any) -> EnvironmentSpec:
    """EnvironmentSpec with small defaults (lookback 3, episodes of 5 steps, no costs);
    `settings` are snake_case field names."""
    defaults: dict[str, Any] = {
        "lookback_window": 3,
        "episode_length": 5,
        "transaction_cost": 0.0,
        "slippage": 0.0,
        "random_start": False,
        "action_space": "continuous",
        "reward": "returns",
        "initial_balance": 1000.0,
    }
    return EnvironmentSpec.model_validate({**defaults, **settings})
