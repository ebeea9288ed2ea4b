import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.trainer.data.fake_s3 import FakeMinio
from tradewind.api.common import SyntheticData
from tradewind.api.training import TrainingData
from tradewind.trainer.data import cache
from tradewind.trainer.data.dataset import SupervisedDataset, SupervisedSplit, build_dataset
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.windows import BUY, HOLD, SELL


def _file_data(path: Path, **overrides: object) -> TrainingData:
    settings: dict[str, object] = {"source": f"file://{path}", "lookback_window": 10}
    settings.update(overrides)
    return TrainingData.model_validate(settings)


@pytest.fixture
def bars_file(tmp_path: Path, daily_bars: pd.DataFrame) -> Path:
    path = tmp_path / "bars.csv"
    daily_bars.to_csv(path, index=False)
    return path


def _splits(dataset: SupervisedDataset) -> list[SupervisedSplit]:
    return [dataset.train, dataset.validation, dataset.test]


def test_quickstart_stocks(cache_dir: Path) -> None:
    data = TrainingData(source="stocks", symbols=["AAPL", "MSFT", "IBM"], lookback_window=30)
    dataset = build_dataset(data, cache_dir=cache_dir)
    assert dataset.symbols == ("AAPL", "IBM", "MSFT")
    assert dataset.num_features == 9
    assert dataset.train.inputs(slice(0, 4)).shape == (4, 30, 9)
    total = sum(len(split) for split in _splits(dataset))
    # Per symbol: 3270 bars - 33 warm-up - 29 before the first full window - the fill bar
    # and 5 horizon bars, less 2 purge gaps of 6 bars between the splits.
    assert total == 3 * (3270 - 33 - 29 - 6 - 2 * 6)
    assert set(np.unique(dataset.train.labels)) == {SELL, HOLD, BUY}


def test_splits_are_in_time_order_with_a_gap(bars_file: Path, cache_dir: Path) -> None:
    dataset = build_dataset(_file_data(bars_file, prediction_horizon=3), cache_dir=cache_dir)
    day = np.timedelta64(1, "D")
    for symbol in range(len(dataset.symbols)):
        times = [s.timestamps[s.symbol_ids == symbol] for s in _splits(dataset)]
        assert times[1].min() - times[0].max() == 5 * day
        assert times[2].min() - times[1].max() == 5 * day
        assert all(np.all(np.diff(t) == day) for t in times)


def test_samples_are_views_of_one_normalised_array(bars_file: Path, cache_dir: Path) -> None:
    dataset = build_dataset(_file_data(bars_file), cache_dir=cache_dir)
    windows = dataset.train.windows
    assert windows.base is not None and not windows.flags.writeable
    assert all(np.shares_memory(windows, s.windows) for s in _splits(dataset))
    # All windows lie in one (row, feature) float32 array: each costs a row, not ten.
    low, high = np.lib.array_utils.byte_bounds(windows)
    assert high - low == (len(windows) + 10 - 1) * 9 * 4


def test_embargo_widens_every_purge_gap(bars_file: Path, cache_dir: Path) -> None:
    data = _file_data(bars_file, prediction_horizon=3, split={"embargo": 7})
    dataset = build_dataset(data, cache_dir=cache_dir)
    times = [s.timestamps[s.symbol_ids == 0] for s in _splits(dataset)]
    assert times[1].min() - times[0].max() == 12 * np.timedelta64(1, "D")
    assert times[2].min() - times[1].max() == 12 * np.timedelta64(1, "D")


@pytest.mark.parametrize("execution", ["next_close", "next_open"])
def test_samples_match_features_labels_and_targets(
    daily_bars: pd.DataFrame, bars_file: Path, cache_dir: Path, execution: str
) -> None:
    data = _file_data(bars_file, normalization="none", prediction_horizon=4, execution=execution)
    dataset = build_dataset(data, cache_dir=cache_dir)
    table, _ = cache.cached_feature_table(data, cache_dir=cache_dir)
    test = dataset.test
    for sample in (0, len(test) // 2, len(test) - 1):
        symbol = int(test.symbol_ids[sample])
        rows = table.rows(symbol)
        end = int(np.searchsorted(table.timestamps[rows], test.timestamps[sample]))
        np.testing.assert_array_equal(
            test.inputs([sample])[0], table.values[rows][end - 9 : end + 1]
        )
        bars = daily_bars[daily_bars["symbol"] == dataset.symbols[symbol]].set_index("timestamp")
        fill = bars["open" if execution == "next_open" else "close"]
        at = fill.index.get_loc(pd.Timestamp(test.timestamps[sample]))
        # decided at bar `at`, filled at the next bar, exited 4 fills later
        expected = fill.iloc[at + 5] / fill.iloc[at + 1] - 1
        assert test.forward_returns[sample] == pytest.approx(expected, rel=1e-5)
        label = BUY if expected > 0.01 else SELL if expected < -0.01 else HOLD
        assert test.labels[sample] == label


def test_normaliser_sees_only_training_data_and_nothing_looks_ahead(
    tmp_path: Path, daily_bars: pd.DataFrame, bars_file: Path, cache_dir: Path
) -> None:
    original = build_dataset(_file_data(bars_file), cache_dir=cache_dir)
    changed_bars = daily_bars.copy()
    late = changed_bars["timestamp"] >= changed_bars["timestamp"].max() - pd.Timedelta(days=20)
    changed_bars.loc[late, ["open", "high", "low", "close"]] *= 3.0
    changed_path = tmp_path / "changed.csv"
    changed_bars.to_csv(changed_path, index=False)
    changed = build_dataset(_file_data(changed_path), cache_dir=cache_dir)

    assert changed.normalizer.state_dict() == original.normalizer.state_dict()
    for part in ("train", "validation"):
        before, after = getattr(original, part), getattr(changed, part)
        np.testing.assert_array_equal(before.inputs(), after.inputs())
        np.testing.assert_array_equal(before.labels, after.labels)
    assert not np.array_equal(original.test.inputs(), changed.test.inputs())


def test_second_build_is_a_cache_hit(
    bars_file: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _file_data(bars_file)
    first = build_dataset(data, cache_dir=cache_dir)
    assert not first.cache_hit and len(list(cache_dir.glob("*.npz"))) == 1

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not load the bars")

    monkeypatch.setattr(cache, "load_bars", no_loading)
    second = build_dataset(data, cache_dir=cache_dir)
    assert second.cache_hit
    np.testing.assert_array_equal(first.train.inputs(), second.train.inputs())
    # The window, labels, split and normalisation are applied after the cache.
    other_windows = data.model_copy(update={"lookback_window": 20, "normalization": "zscore"})
    assert build_dataset(other_windows, cache_dir=cache_dir).cache_hit


def test_changed_file_or_features_miss_the_cache(bars_file: Path, cache_dir: Path) -> None:
    data = _file_data(bars_file)
    build_dataset(data, cache_dir=cache_dir)
    assert not build_dataset(
        data.model_copy(update={"features": ["rsi"]}), cache_dir=cache_dir
    ).cache_hit
    stat = bars_file.stat()
    os.utime(bars_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not build_dataset(data, cache_dir=cache_dir).cache_hit


def test_unreadable_cache_file_is_rebuilt(bars_file: Path, cache_dir: Path) -> None:
    data = _file_data(bars_file)
    build_dataset(data, cache_dir=cache_dir)
    (cached,) = cache_dir.glob("*.npz")
    cached.write_bytes(b"not a zip file")
    assert not build_dataset(data, cache_dir=cache_dir).cache_hit


def test_default_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / "features"


def test_synthetic_samples_carry_regimes_and_the_seed(cache_dir: Path) -> None:
    data = TrainingData(source="synthetic", interval="1d", lookback_window=20)
    dataset = build_dataset(data, seed=1, cache_dir=cache_dir)
    assert set(np.unique(dataset.train.regimes)) <= {0, 1, 2}
    assert dataset.symbols == ("SYN0000", "SYN0001", "SYN0002", "SYN0003")
    other_seed = build_dataset(data, seed=2, cache_dir=cache_dir)
    assert not other_seed.cache_hit
    assert not np.array_equal(dataset.train.inputs(), other_seed.train.inputs())
    explicit = data.model_copy(update={"synthetic": SyntheticData(seed=1)})
    np.testing.assert_array_equal(
        build_dataset(explicit, seed=2, cache_dir=cache_dir).train.inputs(), dataset.train.inputs()
    )


def test_too_little_data_is_a_data_error(bars_file: Path, cache_dir: Path) -> None:
    with pytest.raises(DataError, match="no samples"):
        build_dataset(_file_data(bars_file, lookback_window=400), cache_dir=cache_dir)


def test_s3_source_is_cached_by_etag(daily_bars: pd.DataFrame, cache_dir: Path) -> None:
    client = FakeMinio({("market", "bars.csv"): daily_bars.to_csv(index=False).encode()})
    data = TrainingData(source="s3://market/bars.csv", lookback_window=10)
    assert not build_dataset(data, cache_dir=cache_dir, s3_client=client).cache_hit
    assert build_dataset(data, cache_dir=cache_dir, s3_client=client).cache_hit
    assert len(client.responses) == 1
    client.objects["market", "bars.csv"] = daily_bars.iloc[:-1].to_csv(index=False).encode()
    assert not build_dataset(data, cache_dir=cache_dir, s3_client=client).cache_hit
