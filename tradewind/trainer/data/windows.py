"""Sliding windows, labels, and chronological splits without look-ahead.

A sample is a window ending at bar t (bars t-lookback+1..t) with a target from the fill
prices of bars t+1..t+1+horizon (`tradewind.trainer.execution`). Splits and folds are in time
order with a purge gap of at least horizon + 1 bars between them, so no training target
reaches into a validation or test sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from tradewind.trainer.data.errors import DataError

SELL, HOLD, BUY = 0, 1, 2
LABEL_NAMES = ("sell", "hold", "buy")

IndexArray = npt.NDArray[np.int64]


def sliding_windows(rows: npt.NDArray[Any], lookback: int) -> npt.NDArray[Any]:
    """Read-only view (n_rows - lookback + 1, lookback, n_features) of a (row, feature)
    array: window i is rows i..i+lookback-1. Nothing is copied."""
    if rows.ndim != 2:
        raise ValueError("sliding_windows expects a (row, feature) array")
    if len(rows) < lookback:
        return np.empty((0, lookback, rows.shape[1]), dtype=rows.dtype)
    return sliding_window_view(rows, (lookback, rows.shape[1]))[:, 0]


def label_returns(
    returns: npt.NDArray[np.floating[Any]], buy_threshold: float, sell_threshold: float
) -> IndexArray:
    """BUY above `buy_threshold`, SELL below `sell_threshold`, HOLD otherwise."""
    labels = np.full(returns.shape, HOLD, dtype=np.int64)
    labels[returns > buy_threshold] = BUY
    labels[returns < sell_threshold] = SELL
    return labels


class SplitIndices(NamedTuple):
    """Sample positions of one symbol in each split."""

    train: IndexArray
    validation: IndexArray
    test: IndexArray


def chronological_split(
    sample_times: Sequence[npt.NDArray[np.datetime64]],
    validation: float,
    test: float,
    gap: int,
) -> list[SplitIndices]:
    """Split every symbol's samples (ascending end times) at the same points in time.

    On the distinct sample times of all symbols, the last `test` fraction is the test split
    and the `validation` fraction before it the validation split; the first `gap` times of
    each are skipped. A symbol's own first `gap` samples after its previous split are skipped
    too (for symbols with missing bars). So a training target, which reads up to `gap` bars
    ahead, ends before the first validation bar, and a validation target before the first
    test bar."""
    if sum(len(t) for t in sample_times) == 0:
        raise DataError("no samples to split: every symbol has fewer bars than a window needs")
    times = np.unique(np.concatenate(sample_times))
    n_val, n_test = round(len(times) * validation), round(len(times) * test)
    n_train = len(times) - n_val - n_test
    if n_train <= 0:
        raise DataError(f"no training samples: {len(times)} sample times are too few to split")
    for split, size in (("validation", n_val), ("test", n_test)):
        if 0 < size <= gap:
            raise DataError(
                f"the {split} split is empty: {size} of {len(times)} sample times, less the gap "
                f"of {gap} bars (predictionHorizon + 1 + split.embargo); use more data or a "
                f"larger {split} fraction"
            )
    train_end = times[n_train - 1]
    val_range = (times[n_train + gap], times[n_train + n_val - 1]) if n_val else None
    test_start = times[n_train + n_val + gap] if n_test else None
    splits = []
    for symbol_times in sample_times:
        n_symbol_train = int(np.searchsorted(symbol_times, train_end, "right"))
        previous_end = n_symbol_train
        val = _empty()
        if val_range is not None:
            val = _positions_between(symbol_times, *val_range, first_allowed=previous_end + gap)
            previous_end = int(val[-1]) + 1 if val.size else previous_end
        test_positions = _empty()
        if test_start is not None:
            test_positions = _positions_between(
                symbol_times, test_start, None, first_allowed=previous_end + gap
            )
        splits.append(SplitIndices(np.arange(n_symbol_train, dtype=np.int64), val, test_positions))
    return splits


def _positions_between(
    times: npt.NDArray[np.datetime64],
    low: np.datetime64,
    high: np.datetime64 | None,
    *,
    first_allowed: int,
) -> IndexArray:
    """Positions of `times` in [low, high] (to the end when high is None), none before
    `first_allowed`."""
    start = max(int(np.searchsorted(times, low, "left")), first_allowed)
    stop = len(times) if high is None else int(np.searchsorted(times, high, "right"))
    return np.arange(start, max(start, stop), dtype=np.int64)


def _empty() -> IndexArray:
    return np.empty(0, dtype=np.int64)


class Fold(NamedTuple):
    """Positions (on a timeline of bars or samples) to fit on and to evaluate on."""

    train: IndexArray
    test: IndexArray


def walk_forward_folds(n_positions: int, window: int, step: int, gap: int = 0) -> Iterator[Fold]:
    """Rolling folds: train on `window` positions, skip `gap`, test on the next `step`; then
    move everything `step` forward. Only whole folds are produced."""
    if window < 1 or step < 1 or gap < 0:
        raise DataError("walk-forward needs window >= 1, step >= 1 and gap >= 0")
    last_start = n_positions - window - gap - step
    for start in range(0, last_start + 1, step):
        test_start = start + window + gap
        yield Fold(
            np.arange(start, start + window, dtype=np.int64),
            np.arange(test_start, test_start + step, dtype=np.int64),
        )


def expanding_window_folds(n_positions: int, n_splits: int, gap: int = 0) -> Iterator[Fold]:
    """Time-series cross-validation (as scikit-learn's TimeSeriesSplit): `n_splits` equal
    test blocks at the end; each fold trains on everything before its block less `gap`."""
    test_size = n_positions // (n_splits + 1)
    if n_splits < 1 or test_size < 1 or n_positions - n_splits * test_size - gap < 1:
        raise DataError(
            f"cannot make {n_splits} expanding-window folds of {n_positions} positions "
            f"with a gap of {gap}"
        )
    for test_start in range(n_positions - n_splits * test_size, n_positions, test_size):
        yield Fold(
            np.arange(0, test_start - gap, dtype=np.int64),
            np.arange(test_start, test_start + test_size, dtype=np.int64),
        )
