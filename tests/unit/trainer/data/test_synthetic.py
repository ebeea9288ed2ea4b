import numpy as np
import pytest

from tradewind.api.common import DataSource, SyntheticData
from tradewind.trainer.data.sources import load_bars
from tradewind.trainer.data.synthetic import (
    CALM,
    REGIME_NAMES,
    VOLATILE,
    garch_variance,
    generate_market,
)


def test_same_seed_same_market_other_seed_other_market() -> None:
    settings = SyntheticData(num_symbols=5, num_bars=2000, seed=11)
    first, again = generate_market(settings), generate_market(settings)
    other = generate_market(SyntheticData(num_symbols=5, num_bars=2000, seed=12))
    for field in ("open", "high", "low", "close", "volume", "regimes", "timestamps"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.close, other.close)


def test_bars_are_ohlc_consistent() -> None:
    market = generate_market(SyntheticData(num_symbols=20, num_bars=5000, seed=3))
    assert market.close.shape == (20, 5000)
    assert market.symbols[:2] == ("SYN0000", "SYN0001")
    assert np.all(market.low <= np.minimum(market.open, market.close))
    assert np.all(market.high >= np.maximum(market.open, market.close))
    assert np.all(market.volume > 0)
    assert np.all(np.isfinite(market.close))
    # Each open lies between the previous close and the bar's close (an overnight move),
    # never at the previous close itself, which next_open execution must not fill at.
    previous, close, opens = market.close[:, :-1], market.close[:, 1:], market.open[:, 1:]
    assert np.all(opens >= np.minimum(previous, close) - 1e-9)
    assert np.all(opens <= np.maximum(previous, close) + 1e-9)
    assert np.mean(opens != previous) > 0.99


def test_every_regime_occurs_and_volatile_is_more_volatile() -> None:
    market = generate_market(SyntheticData(num_symbols=10, num_bars=20_000, seed=5))
    assert set(np.unique(market.regimes)) == set(range(len(REGIME_NAMES)))
    log_returns = np.diff(np.log(market.close), axis=1)
    regime_of_return = market.regimes[1:]
    calm = log_returns[:, regime_of_return == CALM].std()
    volatile = log_returns[:, regime_of_return == VOLATILE].std()
    assert volatile > 2 * calm


def test_symbols_are_correlated_and_volatility_clusters() -> None:
    market = generate_market(SyntheticData(num_symbols=8, num_bars=20_000, seed=9))
    log_returns = np.diff(np.log(market.close), axis=1)
    correlations = np.corrcoef(log_returns)[np.triu_indices(8, k=1)]
    assert correlations.min() > 0.05
    squared = log_returns[0] ** 2 - (log_returns[0] ** 2).mean()
    lag_one_autocorrelation = (squared[1:] * squared[:-1]).mean() / squared.var()
    assert lag_one_autocorrelation > 0.05


def test_garch_variance_matches_the_recursion() -> None:
    rng = np.random.default_rng(0)
    shocks = rng.standard_normal((3, 5000))
    level = np.where(np.arange(5000) % 1000 < 500, 1e-4, 4e-4)
    scale = np.array([1.0, 2.0, 0.5])
    expected = np.empty_like(shocks)
    expected[:, 0] = level[0] * scale
    for t in range(1, 5000):
        previous = expected[:, t - 1]
        expected[:, t] = (
            0.02 * level[t] * scale + 0.08 * previous * shocks[:, t - 1] ** 2 + 0.9 * previous
        )
    np.testing.assert_allclose(
        garch_variance(shocks, level, scale, 0.08, 0.9), expected, rtol=1e-10
    )


@pytest.mark.parametrize("interval", ["1m", "1d"])
def test_synthetic_source_gives_num_bars_at_the_requested_interval(interval: str) -> None:
    source = DataSource(
        source="synthetic",
        interval=interval,
        synthetic=SyntheticData(num_symbols=2, num_bars=500, seed=1),
    )
    bars = load_bars(source)
    assert len(bars) == 1000
    assert set(bars["regime"].unique()) <= {0, 1, 2}
    step = bars["timestamp"].iloc[1] - bars["timestamp"].iloc[0]
    assert step == {"1m": np.timedelta64(1, "m"), "1d": np.timedelta64(1, "D")}[interval]
