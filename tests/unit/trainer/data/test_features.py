import math

import numpy as np
import pandas as pd
import pytest

from tradewind.api.common import DEFAULT_FEATURES, FEATURES, DataSource
from tradewind.trainer.data.features import (
    WINDOW,
    SymbolBars,
    compute_features,
    engineer_features,
    feature_columns,
    market_regimes,
)
from tradewind.trainer.data.sources import load_bars

CLOSES = [44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08,
          45.89, 46.03, 45.61, 46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64]  # fmt: skip


def _bars(closes: list[float]) -> SymbolBars:
    close = np.array(closes, dtype=float)
    return SymbolBars(
        open=close.copy(),
        high=close + 0.5,
        low=close - 0.5,
        close=close,
        volume=np.full(len(close), 1e3),
    )


def _column(matrix: np.ndarray, features: list[str], name: str) -> np.ndarray:
    result: np.ndarray = matrix[:, feature_columns(features).index(name)]
    return result


def test_column_counts_and_stable_order() -> None:
    assert len(feature_columns(DEFAULT_FEATURES)) == 9
    assert len(feature_columns(FEATURES)) == 20
    assert (
        feature_columns(["rsi", "returns"])
        == feature_columns(["returns", "rsi"])
        == (
            "returns",
            "rsi_14",
        )
    )


def test_rsi_matches_wilders_definition() -> None:
    changes = np.diff(CLOSES)
    gains, losses = np.clip(changes, 0, None), np.clip(-changes, 0, None)
    average_gain, average_loss = gains[:14].mean(), losses[:14].mean()
    expected = {14: 100 - 100 / (1 + average_gain / average_loss)}
    for t in range(15, len(CLOSES)):
        average_gain = (average_gain * 13 + gains[t - 1]) / 14
        average_loss = (average_loss * 13 + losses[t - 1]) / 14
        expected[t] = 100 - 100 / (1 + average_gain / average_loss)
    rsi = _column(compute_features(_bars(CLOSES), ["rsi"]), ["rsi"], "rsi_14")
    assert np.isnan(rsi[:14]).all()
    for t, value in expected.items():
        assert rsi[t] == pytest.approx(value, rel=1e-12)
    assert rsi[14] == pytest.approx(70.46, abs=0.01)  # the textbook example's first value


def test_returns_and_log_returns_by_hand() -> None:
    matrix = compute_features(_bars(CLOSES), ["returns", "log_returns"])
    assert np.isnan(matrix[0]).all()
    assert matrix[1, 0] == pytest.approx(44.09 / 44.34 - 1, rel=1e-12)
    assert matrix[1, 1] == pytest.approx(math.log(44.09 / 44.34), rel=1e-12)


def test_ohlcv_channels_by_hand() -> None:
    """The guide's CNN input of 5 OHLCV channels, each scale-free."""
    bars = _bars(CLOSES)
    volume = np.arange(1.0, 1.0 + len(CLOSES)) * 100
    bars = SymbolBars(bars.open * 1.001, bars.high, bars.low, bars.close, volume)
    matrix = compute_features(bars, ["ohlcv"])
    assert np.isnan(matrix[0, 0]) and np.isnan(matrix[0, 3])
    assert matrix[1, 0] == pytest.approx(44.09 * 1.001 / 44.34 - 1, rel=1e-12)
    assert matrix[1, 1] == pytest.approx(0.5 / 44.09, rel=1e-12)
    assert matrix[1, 2] == pytest.approx(-0.5 / 44.09, rel=1e-12)
    assert matrix[1, 3] == pytest.approx(44.09 / 44.34 - 1, rel=1e-12)
    log_volume = np.log1p(volume)
    assert np.isnan(matrix[WINDOW - 2, 4])
    assert matrix[WINDOW - 1, 4] == pytest.approx(log_volume[-1] - log_volume.mean(), rel=1e-12)
    # the same bars at ten times the price give the same channels
    scaled = SymbolBars(bars.open * 10, bars.high * 10, bars.low * 10, bars.close * 10, volume)
    np.testing.assert_allclose(compute_features(scaled, ["ohlcv"]), matrix, rtol=1e-9)


def test_atr_by_hand() -> None:
    bars = _bars(CLOSES)
    atr = compute_features(bars, ["atr"])[:, 0]
    true_range = [
        max(
            bars.high[t] - bars.low[t],
            abs(bars.high[t] - CLOSES[t - 1]),
            abs(bars.low[t] - CLOSES[t - 1]),
        )
        for t in range(1, len(CLOSES))
    ]
    average = float(np.mean(true_range[:14]))
    assert atr[14] == pytest.approx(average / CLOSES[14], rel=1e-12)
    average = (average * 13 + true_range[14]) / 14
    assert atr[15] == pytest.approx(average / CLOSES[15], rel=1e-12)


def test_bollinger_by_hand() -> None:
    closes = [*CLOSES, 46.5, 47.0]
    percent_b, bandwidth = compute_features(_bars(closes), ["bollinger"])[-1]
    window = np.array(closes[-20:])
    middle, std = window.mean(), window.std()
    assert percent_b == pytest.approx((closes[-1] - (middle - 2 * std)) / (4 * std), rel=1e-10)
    assert bandwidth == pytest.approx(4 * std / middle, rel=1e-10)


def test_flat_prices_give_finite_neutral_features() -> None:
    closes = [10.0] * 60
    matrix = compute_features(_bars(closes), list(FEATURES))
    columns = feature_columns(FEATURES)
    last = dict(zip(columns, matrix[-1], strict=True))
    assert np.isfinite(matrix[-1]).all()
    assert last["rsi_14"] == 50.0
    assert last["bollinger_pct_b"] == 0.5
    assert last["volume_zscore_20"] == 0.0


def test_no_nan_after_the_warm_up_on_real_data() -> None:
    bars = load_bars(DataSource(source="stocks", symbols=["AAPL", "FB"]))
    table = engineer_features(bars, list(FEATURES))
    assert table.values.shape == (len(bars) - 2 * 33, 20)
    assert np.isfinite(table.values).all()
    assert np.isfinite(table.volatility).all()
    assert set(np.unique(table.regimes)) == {0, 1, 2}  # read from the prices
    # MACD's signal line needs 26 + 9 - 1 closes: the first kept bar is each symbol's 34th.
    for i, symbol in enumerate(table.symbols):
        own = bars[bars["symbol"] == symbol]["timestamp"].reset_index(drop=True)
        assert table.timestamps[table.rows(i)][0] == own[33]


def test_features_never_look_ahead(daily_bars: pd.DataFrame) -> None:
    one = daily_bars[daily_bars["symbol"] == "SYN0000"]
    fields = {c: one[c].to_numpy(copy=True) for c in ("open", "high", "low", "close", "volume")}
    before = compute_features(SymbolBars(**fields), list(FEATURES))
    changed_bar = 150
    for name in ("high", "close", "volume"):
        fields[name][changed_bar:] *= 1.5
    after = compute_features(SymbolBars(**fields), list(FEATURES))
    np.testing.assert_array_equal(before[:changed_bar], after[:changed_bar])
    assert not np.allclose(before[changed_bar], after[changed_bar])


def test_symbols_of_different_lengths_get_their_own_features(daily_bars: pd.DataFrame) -> None:
    # SYN0001 loses its first 120 bars: computed side by side, each must equal its own.
    shorter = daily_bars[(daily_bars["symbol"] != "SYN0001") | (daily_bars.index % 300 >= 120)]
    table = engineer_features(shorter.reset_index(drop=True), list(FEATURES))
    for i, symbol in enumerate(table.symbols):
        own = shorter[shorter["symbol"] == symbol]
        fields = {c: own[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}
        alone = compute_features(SymbolBars(**fields), list(FEATURES))
        np.testing.assert_allclose(table.values[table.rows(i)], alone[33:], rtol=1e-6)


def test_market_regimes_read_from_the_bars_agree_with_the_generators() -> None:
    """On synthetic bars, whose regimes are known, the regimes read from the prices alone
    match them far more often than chance, and each regime is found."""
    from tradewind.api.common import SyntheticData
    from tradewind.trainer.data.synthetic import NO_REGIME, generate_market

    market = generate_market(SyntheticData(num_symbols=2, num_bars=8000, seed=4), "1d")
    for close in market.close:
        found = market_regimes(close)
        known = found != NO_REGIME
        assert known[WINDOW + 1 :].all() and not known[:WINDOW].any()
        truth = market.regimes[known]
        chance = sum(np.mean(truth == r) * np.mean(found[known] == r) for r in range(3))
        assert np.mean(found[known] == truth) > chance + 0.12
        for regime in range(3):  # each true regime is the one most often read where it holds
            counts = np.bincount(found[known][truth == regime], minlength=3)
            assert counts[regime] / counts.sum() > 0.4, (regime, counts)


def test_market_regimes_by_hand() -> None:
    calm = 100 * np.exp(np.cumsum(np.tile([0.01, -0.01], 60)))
    trend = calm[-1] * np.exp(np.cumsum(np.tile([0.015, -0.005], 30)))  # +0.5% a bar
    wild = trend[-1] * np.exp(np.cumsum(np.tile([0.05, -0.05], 15)))
    regimes = market_regimes(np.concatenate([calm, trend, wild]))
    assert set(regimes[WINDOW + 1 : 120]) == {0}
    assert regimes[175] == 1 and regimes[205] == 2
