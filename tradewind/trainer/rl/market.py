"""The market an RL environment trades: aligned, engineered, normalised bars as arrays.

`load_market` runs the data pipeline once (bars -> per-symbol features, from the feature
cache when it can), keeps the timestamps every symbol has (inner join), splits them
chronologically into a training, a validation and a test market, and scales the features
with a `Normalizer` fitted on the training rows only. Checkpoint selection reads the
validation market; only the final report (each agent, the ensemble, buy-and-hold) reads the
test market. Prices are fill prices (`tradewind.trainer.execution`): the opens or the closes,
as `data.execution` says. The environments never touch pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from tradewind.api.common import Execution
from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.data import DataError, FeatureTable, Normalizer, cached_feature_table
from tradewind.trainer.data.object_store import ObjectStoreClient
from tradewind.trainer.execution import fill_prices


@dataclass(frozen=True)
class Market:
    """Bars of S symbols on T common timestamps, oldest first."""

    features: npt.NDArray[np.float32]
    """(T, S, F) engineered and normalised features; row t uses bars <= t only."""
    prices: npt.NDArray[np.float64]
    """(T, S) fill prices, positive: the price at which a decision made at bar t-1 fills at
    bar t, the close or the open (`data.execution`; split-adjusted for the bundled stocks)."""
    timestamps: npt.NDArray[np.datetime64]
    """(T,) ascending."""
    symbols: tuple[str, ...]
    """The S symbols, in the order of axis 1."""
    feature_names: tuple[str, ...]
    """The F feature columns, in the order of axis 2."""

    def __post_init__(self) -> None:
        if self.features.ndim != 3 or self.features.dtype != np.float32:
            raise DataError("Market.features must be a float32 (time, symbol, feature) array")
        n_bars, n_symbols, n_features = self.features.shape
        if self.prices.shape != (n_bars, n_symbols) or self.prices.dtype != np.float64:
            raise DataError(f"Market.prices must be float64 of shape {(n_bars, n_symbols)}")
        if self.timestamps.shape != (n_bars,):
            raise DataError(f"Market.timestamps must have shape {(n_bars,)}")
        if len(self.symbols) != n_symbols or len(self.feature_names) != n_features:
            raise DataError("Market.symbols / feature_names do not match the features' shape")
        if not (np.isfinite(self.prices).all() and (self.prices > 0).all()):
            raise DataError("Market.prices must be positive and finite")
        if not np.isfinite(self.features).all():
            raise DataError("Market.features must be finite")

    @property
    def num_bars(self) -> int:
        """T, the number of bars."""
        return int(self.features.shape[0])

    @property
    def num_symbols(self) -> int:
        """S, the number of symbols."""
        return int(self.features.shape[1])

    @property
    def num_features(self) -> int:
        """F, the number of feature columns per symbol and bar."""
        return int(self.features.shape[2])


def required_bars(env: EnvironmentSpec) -> int:
    """Bars a market needs for one episode: `lookbackWindow` bars for the first
    observation, then one more bar per step (each step fills at the next bar's fill price)."""
    return env.lookback_window + env.episode_length


class Markets(NamedTuple):
    """The chronological parts of a run's bars. `validation` and `test` each start with the
    `lookbackWindow - 1` bars before them as history for their first observation."""

    train: Market
    """What the agents learn on."""
    validation: Market
    """What periodic evaluation, checkpoint selection and grid-search ranking read."""
    test: Market
    """Held out from every choice: only the final report reads it."""


def load_market(
    env: EnvironmentSpec,
    seed: int,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    *,
    cache_dir: Path | None = None,
    s3_client: ObjectStoreClient | None = None,
) -> Markets:
    """The (train, validation, test) markets of `env.data`, split chronologically.

    The last `test_fraction` of the common timestamps are the test market, the
    `validation_fraction` before them the validation market, the rest the training market.
    Each non-training market starts with the `lookbackWindow - 1` bars before it as history
    for its first observations (its first decision is at its first own bar; no reward of a
    market uses a price of a later one). Prices are `env.data.execution`'s fill prices. The
    normaliser (`env.data.normalization`) is fitted on the training market's rows. `seed`
    seeds the synthetic source when its settings are unset; `cache_dir` and `s3_client` are
    passed to `cached_feature_table` (default cache: `$TRADEWIND_CACHE/features`). Raises
    DataError when any market has fewer than `lookbackWindow + episodeLength` bars."""
    check_fractions(validation_fraction, test_fraction)
    table, _ = cached_feature_table(
        env.data, synthetic_seed=seed, cache_dir=cache_dir, s3_client=s3_client
    )
    market = align_feature_table(table, env.data.execution)
    return split_market(market, env, validation_fraction, test_fraction)


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Refuse fractions that leave a market empty."""
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1, got "
            f"{validation_fraction} + {test_fraction}"
        )


def align_feature_table(table: FeatureTable, execution: Execution) -> Market:
    """Un-normalised Market of the timestamps every symbol of `table` has (after each
    symbol's feature warm-up), priced at `execution`'s fill prices."""
    per_symbol = [table.timestamps[table.rows(i)] for i in range(len(table.symbols))]
    common = per_symbol[0]
    for times in per_symbol[1:]:
        common = np.intersect1d(common, times, assume_unique=True)
    if common.size == 0:
        raise DataError(f"symbols {', '.join(table.symbols)} share no timestamps")
    rows = np.stack(
        [table.offsets[i] + np.searchsorted(times, common) for i, times in enumerate(per_symbol)],
        axis=1,
    )  # (T, S) row of each symbol's bar at each common timestamp
    prices = fill_prices(table.open, table.close, execution)
    return Market(
        features=np.ascontiguousarray(table.values[rows], dtype=np.float32),
        prices=np.ascontiguousarray(prices[rows], dtype=np.float64),
        timestamps=common,
        symbols=table.symbols,
        feature_names=table.feature_names,
    )


def split_market(
    market: Market, env: EnvironmentSpec, validation_fraction: float, test_fraction: float
) -> Markets:
    """(train, validation, test) parts of an un-normalised `market`, normalised with
    statistics of the training rows (see `load_market`)."""
    check_fractions(validation_fraction, test_fraction)
    n_bars = market.num_bars
    n_test = round(n_bars * test_fraction)
    n_validation = round(n_bars * validation_fraction)
    n_train = n_bars - n_validation - n_test
    _check_sizes(env, n_bars, (n_train, n_validation, n_test), (validation_fraction, test_fraction))
    n_features = market.num_features
    normalizer = Normalizer(env.data.normalization).fit(
        market.features[:n_train].reshape(-1, n_features)
    )
    scaled = normalizer.transform(market.features.reshape(-1, n_features)).reshape(
        market.features.shape
    )

    def part(rows: slice) -> Market:
        return Market(
            features=np.ascontiguousarray(scaled[rows]),
            prices=np.ascontiguousarray(market.prices[rows]),
            timestamps=market.timestamps[rows].copy(),
            symbols=market.symbols,
            feature_names=market.feature_names,
        )

    context = env.lookback_window - 1
    test_start = n_train + n_validation
    return Markets(
        part(slice(0, n_train)),
        part(slice(n_train - context, test_start)),
        part(slice(test_start - context, n_bars)),
    )


def _check_sizes(
    env: EnvironmentSpec, n_bars: int, sizes: tuple[int, int, int], fractions: tuple[float, float]
) -> None:
    """DataError unless each market holds an episode (the non-training ones with their
    `lookbackWindow - 1` bars of history)."""
    needed, context = required_bars(env), env.lookback_window - 1
    n_train, n_validation, n_test = sizes
    if n_train >= needed and min(n_validation, n_test) + context >= needed:
        return
    raise DataError(
        f"too few bars: an episode needs lookbackWindow + episodeLength = {needed} bars in "
        f"each of the training, validation and test markets, but the {n_bars} common bars "
        f"(after the feature warm-up) split into {n_train} training, {n_validation} "
        f"validation and {n_test} test bars (the last two +{context} of history) at "
        f"eval.split {fractions[0]} and eval.test {fractions[1]}; use more data, smaller "
        f"eval.split / eval.test or a shorter episodeLength or lookbackWindow"
    )
