import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.unit.trainer.rl.markets import random_market
from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.data import DataError, FeatureTable, Normalizer
from tradewind.trainer.rl import (
    BatchedTradingEnv,
    Market,
    TradingEnvironment,
    align_feature_table,
    load_market,
    split_market,
)


def _spec(**settings: object) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate(settings)


def test_load_market_on_the_bundled_stocks(tmp_path: Path) -> None:
    spec = _spec(data={"source": "stocks", "symbols": ["MSFT", "AAPL"]}, lookbackWindow=30)
    train, validation, test = load_market(spec, seed=0, cache_dir=tmp_path, test_fraction=0.1)
    assert train.symbols == validation.symbols == test.symbols == ("AAPL", "MSFT")
    assert train.num_features == 9 and train.feature_names[0] == "returns"
    assert train.features.dtype == np.float32 and train.prices.dtype == np.float64
    # the validation and test markets each repeat 29 bars before them
    total = train.num_bars + validation.num_bars - 29 + test.num_bars - 29
    assert validation.num_bars - 29 == round(0.2 * total)
    assert test.num_bars - 29 == round(0.1 * total)
    # Chronological: each market's own bars follow the previous market's; its first 29 bars
    # are the previous market's last (history for its first observation).
    np.testing.assert_array_equal(validation.timestamps[:29], train.timestamps[-29:])
    np.testing.assert_array_equal(test.timestamps[:29], validation.timestamps[-29:])
    assert validation.timestamps[29] > train.timestamps[-1]
    assert test.timestamps[29] > validation.timestamps[-1]
    assert (np.diff(train.timestamps) > np.timedelta64(0)).all()
    assert str(train.timestamps[0])[:4] == "2000" and str(test.timestamps[-1])[:10] == "2013-03-01"
    # Robust scaling fitted on the training rows: their medians are 0, IQRs 1.
    rows = train.features.reshape(-1, train.num_features)
    np.testing.assert_allclose(np.median(rows, axis=0), 0.0, atol=1e-5)
    q25, q75 = np.percentile(rows, [25, 75], axis=0)
    np.testing.assert_allclose(q75 - q25, 1.0, rtol=1e-4)
    # Every market runs an episode.
    TradingEnvironment(train, spec, seed=0).reset()
    BatchedTradingEnv(validation, spec, 2, seed=0).reset()
    BatchedTradingEnv(test, spec, 1, seed=0).reset()


def test_the_normaliser_is_fitted_on_the_training_rows_only() -> None:
    raw = random_market(n_bars=50, n_symbols=2)
    spec = _spec(lookbackWindow=4, episodeLength=6, data={"normalization": "zscore"})
    train, validation, test = split_market(raw, spec, 0.2, 0.2)
    assert train.num_bars == 30 and validation.num_bars == test.num_bars == 10 + 3
    normalizer = Normalizer("zscore").fit(raw.features[:30].reshape(-1, 2))
    expected = normalizer.transform(raw.features.reshape(-1, 2)).reshape(raw.features.shape)
    np.testing.assert_array_equal(train.features, expected[:30])
    np.testing.assert_array_equal(validation.features, expected[27:40])
    np.testing.assert_array_equal(validation.prices, raw.prices[27:40])
    np.testing.assert_array_equal(test.features, expected[37:])
    np.testing.assert_array_equal(test.prices, raw.prices[37:])
    # Whatever the validation and test rows hold, the training market does not change.
    features = raw.features.copy()
    features[30:] = features[30:] * 1000.0 + 50.0
    changed, _, _ = split_market(dataclasses.replace(raw, features=features), spec, 0.2, 0.2)
    np.testing.assert_array_equal(changed.features, train.features)


def test_symbols_are_inner_joined_on_their_timestamps() -> None:
    days = np.datetime64("2021-01-01", "ns") + np.arange(12).astype("timedelta64[D]")
    first, second = days[:10], np.delete(days[2:], 3)  # second lacks day 5
    n_rows = len(first) + len(second)
    values = np.arange(n_rows * 2, dtype=np.float32).reshape(n_rows, 2)
    table = FeatureTable(
        symbols=("A", "B"),
        feature_names=("x", "y"),
        offsets=np.array([0, len(first), n_rows], dtype=np.int64),
        timestamps=np.concatenate([first, second]),
        values=values,
        open=np.arange(1, n_rows + 1, dtype=np.float64),
        close=np.arange(1, n_rows + 1, dtype=np.float64),
        volatility=np.zeros(n_rows, np.float32),
        regimes=np.full(n_rows, -1, np.int8),
    )
    market = align_feature_table(table, "next_close")
    common = days[[2, 3, 4, 6, 7, 8, 9]]
    np.testing.assert_array_equal(market.timestamps, common)
    rows_a = [2, 3, 4, 6, 7, 8, 9]
    rows_b = [10 + list(second).index(day) for day in common]
    np.testing.assert_array_equal(market.features[:, 0], values[rows_a])
    np.testing.assert_array_equal(market.features[:, 1], values[rows_b])
    np.testing.assert_array_equal(market.prices[:, 1], np.array(rows_b) + 1.0)


def test_too_few_bars_for_lookback_plus_episode_is_a_data_error() -> None:
    raw = random_market(n_bars=50)
    with pytest.raises(DataError, match="lookbackWindow \\+ episodeLength = 30"):
        split_market(raw, _spec(lookbackWindow=10, episodeLength=20), 0.2, 0.2)
    # 40 training bars are enough for 5 + 30, but 5 test bars (+4) are not.
    message = "training, validation and test markets.* 40 training, 5 validation and 5 test bars"
    with pytest.raises(DataError, match=message):
        split_market(raw, _spec(lookbackWindow=5, episodeLength=30), 0.1, 0.1)
    # 30 training and 10 validation bars (+4) are enough for 5 + 9, 5 test bars (+4) are not.
    with pytest.raises(DataError, match="5 test bars"):
        split_market(raw, _spec(lookbackWindow=5, episodeLength=9), 0.2, 0.1)
    split_market(raw, _spec(lookbackWindow=5, episodeLength=9), 0.2, 0.2)


def test_load_market_is_seeded_for_synthetic_data(tmp_path: Path) -> None:
    spec = _spec(data={"source": "synthetic"}, lookbackWindow=10, episodeLength=50)
    first = load_market(spec, seed=1, cache_dir=tmp_path / "a")
    again = load_market(spec, seed=1, cache_dir=tmp_path / "b")
    other = load_market(spec, seed=2, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first[0].prices, again[0].prices)
    assert not np.array_equal(first[0].prices, other[0].prices)
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        load_market(spec, seed=1, validation_fraction=1.0, cache_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="validation_fraction \\+ test_fraction"):
        load_market(spec, seed=1, validation_fraction=0.5, test_fraction=0.5, cache_dir=tmp_path)


def test_market_checks_its_arrays() -> None:
    market = random_market(n_bars=10)
    with pytest.raises(DataError, match="float32"):
        dataclasses.replace(market, features=market.features.astype(np.float64))
    with pytest.raises(DataError, match="positive"):
        dataclasses.replace(market, prices=-market.prices)
    with pytest.raises(DataError, match="symbols"):
        Market(
            market.features, market.prices, market.timestamps, ("only one",), market.feature_names
        )
