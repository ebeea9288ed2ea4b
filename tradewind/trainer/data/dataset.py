"""TrainingData -> train / validation / test samples for supervised training.

bars -> features (cached) -> chronological split -> normaliser fitted on the training rows
-> one normalised (row, feature) array -> windows as a view of it, selected per split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradewind.api.training import TrainingData
from tradewind.trainer.data.cache import cached_feature_table
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.features import FeatureTable
from tradewind.trainer.data.normalize import Normalizer
from tradewind.trainer.data.object_store import ObjectStoreClient
from tradewind.trainer.data.windows import (
    LABEL_NAMES,
    SplitIndices,
    chronological_split,
    label_returns,
    sliding_windows,
)
from tradewind.trainer.execution import bars_after_decision, fill_prices, trade_returns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisedSplit:
    """The samples of one split. Sample i is `windows[window_index[i]]`, the window of
    `lookback` normalised feature rows ending at bar `timestamps[i]` of symbol
    `symbol_ids[i]`; its targets come from the fill prices of the bars after that bar."""

    windows: npt.NDArray[np.float32]
    """(n_windows, lookback, n_features) read-only view shared by all splits; windows that
    cross a symbol boundary exist in it but no sample points at them."""
    window_index: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    """SELL=0, HOLD=1, BUY=2, from `forward_returns`."""
    forward_returns: npt.NDArray[np.float32]
    """What a position taken on the window's information earns: fill at bar t+1, exit
    `predictionHorizon` fills later (`execution.trade_returns`); the regression target and
    the backtest's return."""
    volatility: npt.NDArray[np.float32]
    """Realised volatility at the window's last bar (curriculum by volatility)."""
    regimes: npt.NDArray[np.int8]
    """Regime at the window's last bar (synthetic data; -1 for real data)."""
    symbol_ids: npt.NDArray[np.int64]
    """Index into `SupervisedDataset.symbols`."""
    timestamps: npt.NDArray[np.datetime64]
    """Time of the window's last bar."""

    def __len__(self) -> int:
        return len(self.window_index)

    def inputs(self, samples: Any = slice(None)) -> npt.NDArray[np.float32]:
        """Windows of `samples` (positions, a slice or a mask): a (n, lookback, n_features)
        array, copied for a batch."""
        batch: npt.NDArray[np.float32] = self.windows[self.window_index[samples]]
        return batch


@dataclass(frozen=True)
class SupervisedDataset:
    """Everything a supervised trainer needs from the data."""

    train: SupervisedSplit
    validation: SupervisedSplit
    test: SupervisedSplit
    feature_names: tuple[str, ...]
    symbols: tuple[str, ...]
    normalizer: Normalizer
    """Fitted on the training rows; checkpoint it with the model."""
    lookback_window: int
    prediction_horizon: int
    cache_hit: bool
    """Whether the features came from the cache."""
    samples: SampleBars | None = None
    """The un-normalised table and every symbol's sample bars: what folds re-split and
    re-normalise (None for datasets assembled by hand in tests)."""

    @property
    def num_features(self) -> int:
        """Features per bar (the models' input width)."""
        return len(self.feature_names)


def build_dataset(
    data: TrainingData,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
    s3_client: ObjectStoreClient | None = None,
) -> SupervisedDataset:
    """Load, engineer (or read cached features), split, normalise and window `data`.

    `seed` seeds the synthetic source when `data.synthetic` is unset; the rest is
    deterministic. `cache_dir` defaults to `$TRADEWIND_CACHE/features`; `s3_client` reads
    `s3://` sources (default: a MinIO client from the environment)."""
    table, cache_hit = cached_feature_table(
        data, synthetic_seed=seed, cache_dir=cache_dir, s3_client=s3_client
    )
    dataset = assemble_dataset(table, data, cache_hit=cache_hit)
    log.info(
        "samples: train %d, validation %d, test %d; %d features x %d bars; train labels %s",
        len(dataset.train),
        len(dataset.validation),
        len(dataset.test),
        dataset.num_features,
        data.lookback_window,
        dict(
            zip(LABEL_NAMES, np.bincount(dataset.train.labels, minlength=3).tolist(), strict=True)
        ),
    )
    return dataset


@dataclass(frozen=True)
class SampleBars:
    """An engineered (un-normalised) feature table and, per symbol, the bars that end a
    sample (`bars`, within the symbol) and their times (`times`)."""

    table: FeatureTable
    bars: list[npt.NDArray[np.int64]]
    times: list[npt.NDArray[np.datetime64]]


def purge_gap(data: TrainingData) -> int:
    """Sample times skipped between a fit and the block evaluated after it: the bars a
    trade reads after its decision bar (`bars_after_decision`), plus `split.embargo`."""
    return bars_after_decision(data.prediction_horizon) + data.split.embargo


def assemble_dataset(
    table: FeatureTable, data: TrainingData, *, cache_hit: bool = False
) -> SupervisedDataset:
    """Split, normalise and window an engineered feature table as `data` says."""
    samples = sample_bars_of(table, data)
    splits = chronological_split(
        samples.times, data.split.validation, data.split.test, purge_gap(data)
    )
    return dataset_from_splits(samples, splits, data, cache_hit=cache_hit)


def sample_bars_of(table: FeatureTable, data: TrainingData) -> SampleBars:
    """Every symbol's sample bars: a full window behind them and a whole trade after."""
    lookback, horizon = data.lookback_window, data.prediction_horizon
    bars = [_sample_bars(table, i, lookback, horizon) for i in range(len(table.symbols))]
    if not any(b.size for b in bars):
        longest = int(np.diff(table.offsets).max(initial=0))
        raise DataError(
            f"no samples: the longest symbol has {longest} bars after the feature warm-up, and "
            f"a sample needs lookbackWindow + 1 + predictionHorizon = {lookback + 1 + horizon} "
            "(the window, the next bar where its decision fills, the horizon)"
        )
    times = [table.timestamps[table.rows(i)][b] for i, b in enumerate(bars)]
    return SampleBars(table, bars, times)


def dataset_from_splits(
    samples: SampleBars,
    splits: list[SplitIndices],
    data: TrainingData,
    *,
    cache_hit: bool = False,
) -> SupervisedDataset:
    """The dataset of given per-symbol splits (positions into `samples.bars`), normalised
    with statistics of the rows its training windows read, and nothing after them."""
    table, lookback = samples.table, data.lookback_window
    normalizer = Normalizer(data.normalization).fit(
        table.values[_training_rows(table, samples.bars, splits, lookback)]
    )
    windows = sliding_windows(normalizer.transform(table.values), lookback)

    def split_of(part: int) -> SupervisedSplit:
        chosen = [bars[split[part]] for bars, split in zip(samples.bars, splits, strict=True)]
        return _select_samples(table, windows, chosen, data)

    return SupervisedDataset(
        train=split_of(0),
        validation=split_of(1),
        test=split_of(2),
        feature_names=table.feature_names,
        symbols=table.symbols,
        normalizer=normalizer,
        lookback_window=lookback,
        prediction_horizon=data.prediction_horizon,
        cache_hit=cache_hit,
        samples=samples,
    )


def _sample_bars(
    table: FeatureTable, symbol: int, lookback: int, horizon: int
) -> npt.NDArray[np.int64]:
    """Bars (within the symbol) that end a full window and have the fill bar and `horizon`
    more bars after them."""
    n_rows = table.offsets[symbol + 1] - table.offsets[symbol]
    return np.arange(lookback - 1, n_rows - bars_after_decision(horizon), dtype=np.int64)


def _training_rows(
    table: FeatureTable,
    sample_bars: list[npt.NDArray[np.int64]],
    splits: list[SplitIndices],
    lookback: int,
) -> npt.NDArray[np.int64]:
    """Rows the training windows read: each symbol's rows from its first training window's
    first bar to its last training bar."""
    rows = []
    for i, (bars, split) in enumerate(zip(sample_bars, splits, strict=True)):
        if split.train.size:
            first, last = bars[split.train[0]] - (lookback - 1), bars[split.train[-1]]
            start = table.offsets[i]
            rows.append(np.arange(start + first, start + last + 1, dtype=np.int64))
    if not rows:
        raise DataError("no training samples to fit the normaliser on")
    return np.concatenate(rows)


def _select_samples(
    table: FeatureTable,
    windows: npt.NDArray[np.float32],
    bars_per_symbol: list[npt.NDArray[np.int64]],
    data: TrainingData,
) -> SupervisedSplit:
    """The samples ending at the given bars of each symbol."""
    lookback, horizon = data.lookback_window, data.prediction_horizon
    end_rows = np.concatenate(
        [table.offsets[i] + bars for i, bars in enumerate(bars_per_symbol)]
    ).astype(np.int64)
    targets = np.concatenate(
        [
            trade_returns(
                fill_prices(table.open[table.rows(i)], table.close[table.rows(i)], data.execution),
                horizon,
            )[bars]
            for i, bars in enumerate(bars_per_symbol)
        ]
    )
    symbol_ids = np.concatenate(
        [np.full(len(bars), i, dtype=np.int64) for i, bars in enumerate(bars_per_symbol)]
    )
    return SupervisedSplit(
        windows=windows,
        window_index=end_rows - (lookback - 1),
        labels=label_returns(targets, data.labels.buy_threshold, data.labels.sell_threshold),
        forward_returns=targets.astype(np.float32),
        volatility=table.volatility[end_rows],
        regimes=table.regimes[end_rows],
        symbol_ids=symbol_ids,
        timestamps=table.timestamps[end_rows],
    )
