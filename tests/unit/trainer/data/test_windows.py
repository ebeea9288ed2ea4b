import numpy as np
import pytest

from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.windows import (
    BUY,
    HOLD,
    SELL,
    chronological_split,
    expanding_window_folds,
    label_returns,
    sliding_windows,
    walk_forward_folds,
)
from tradewind.trainer.execution import fill_prices, trade_returns


def _days(n: int, skip: tuple[int, ...] = ()) -> np.ndarray:
    days = np.datetime64("2020-01-01") + np.arange(n)
    return np.delete(days, list(skip)).astype("datetime64[ns]")


def test_windows_are_read_only_views() -> None:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    windows = sliding_windows(rows, 3)
    assert windows.shape == (8, 3, 4)
    assert np.shares_memory(windows, rows)
    np.testing.assert_array_equal(windows[5], rows[5:8])
    assert not windows.flags.writeable


def test_trade_returns_fill_at_the_next_bar_and_exit_horizon_fills_later() -> None:
    prices = np.array([100.0, 101.0, 99.0, 110.0, 100.0])
    returns = trade_returns(prices, 2)
    np.testing.assert_allclose(returns[:2], [110 / 101 - 1, 100 / 99 - 1])
    assert np.isnan(returns[2:]).all()


def test_fill_prices_are_the_open_or_the_close() -> None:
    open_, close = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    np.testing.assert_array_equal(fill_prices(open_, close, "next_open"), open_)
    np.testing.assert_array_equal(fill_prices(open_, close, "next_close"), close)


def test_labels_by_threshold_with_holds_at_the_boundaries() -> None:
    returns = np.array([0.02, 0.01, 0.0, -0.01, -0.02])
    np.testing.assert_array_equal(
        label_returns(returns, 0.01, -0.01), [BUY, HOLD, HOLD, HOLD, SELL]
    )


def test_split_leaves_a_gap_of_the_horizon() -> None:
    (split,) = chronological_split([_days(100)], validation=0.2, test=0.1, gap=5)
    np.testing.assert_array_equal(split.train, np.arange(70))
    np.testing.assert_array_equal(split.validation, np.arange(75, 90))
    np.testing.assert_array_equal(split.test, np.arange(95, 100))


def test_split_without_validation_puts_the_gap_before_test() -> None:
    (split,) = chronological_split([_days(100)], validation=0.0, test=0.2, gap=3)
    assert split.train[-1] == 79 and split.validation.size == 0 and split.test[0] == 83


def test_split_cuts_every_symbol_at_the_same_time() -> None:
    late_starter = _days(100)[40:]
    splits = chronological_split([_days(100), late_starter], validation=0.2, test=0.1, gap=2)
    full, late = splits
    assert _days(100)[full.train[-1]] == late_starter[late.train[-1]]
    assert _days(100)[full.test[0]] == late_starter[late.test[0]]


def test_split_gap_also_counts_a_symbols_own_bars() -> None:
    # The sparse symbol misses the bars right after the cut: its own gap must still hold.
    sparse = _days(100, skip=(70, 71, 72, 73))
    _, split = chronological_split([_days(100), sparse], validation=0.2, test=0.1, gap=5)
    assert split.validation[0] - split.train[-1] > 5


def test_split_too_small_for_the_gap_is_an_error() -> None:
    with pytest.raises(DataError, match="validation split is empty"):
        chronological_split([_days(20)], validation=0.1, test=0.0, gap=5)


def test_walk_forward_folds() -> None:
    folds = list(walk_forward_folds(20, window=8, step=4, gap=1))
    assert [(f.train[0], f.train[-1], f.test[0], f.test[-1]) for f in folds] == [
        (0, 7, 9, 12),
        (4, 11, 13, 16),
    ]


def test_expanding_window_folds() -> None:
    folds = list(expanding_window_folds(10, n_splits=3, gap=1))
    assert [(f.train.tolist(), f.test.tolist()) for f in folds] == [
        ([0, 1, 2], [4, 5]),
        ([0, 1, 2, 3, 4], [6, 7]),
        ([0, 1, 2, 3, 4, 5, 6], [8, 9]),
    ]
    with pytest.raises(DataError):
        list(expanding_window_folds(3, n_splits=5))
