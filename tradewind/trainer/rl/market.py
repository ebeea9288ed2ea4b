"""The market an RL environment trades: aligned, engineered, normalised bars as arrays.

`load_market` runs the data pipeline once (bars -> per-symbol features, from the feature
cache when it can), keeps the timestamps every symbol has (inner join), splits them
chronologically into a training and an evaluation market, and scales the features with a
`Normalizer` fitted on the training rows only. The environments never touch pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.data import DataError, FeatureTable, Normalizer, cached_feature_table
from tradewind.trainer.data.object_store import ObjectStoreClient


@dataclass(frozen=True)
class Market:
    """Bars of S symbols on T common timestamps, oldest first."""

    features: npt.NDArray[np.float32]
    """(T, S, F) engineered and normalised features; row t uses bars <= t only."""
    prices: npt.NDArray[np.float64]
    """(T, S) close prices (split-adjusted for the bundled stocks), positive."""
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
    observation, then one more bar per step (each step fills at the next bar's close)."""
    return env.lookback_window + env.episode_length


def load_market(
    env: EnvironmentSpec,
    seed: int,
    eval_fraction: float = 0.2,
    *,
    cache_dir: Path | None = None,
    s3_client: ObjectStoreClient | None = None,
) -> tuple[Market, Market]:
    """The (train, eval) markets of `env.data`, split chronologically.

    The last `eval_fraction` of the common timestamps are the evaluation market; it starts
    with the `lookbackWindow - 1` training bars before them as history for its first
    observations (its first decision is at its first own bar; no training reward uses an
    evaluation price). The normaliser (`env.data.normalization`) is fitted on the training
    market's rows. `seed` seeds the synthetic source when its settings are unset;
    `cache_dir` and `s3_client` are passed to `cached_feature_table` (default cache:
    `$TRADEWIND_CACHE/features`). Raises DataError when either market has fewer than
    `lookbackWindow + episodeLength` bars."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    table, _ = cached_feature_table(
        env.data, synthetic_seed=seed, cache_dir=cache_dir, s3_client=s3_client
    )
    return split_market(align_feature_table(table), env, eval_fraction)


def align_feature_table(table: FeatureTable) -> Market:
    """Un-normalised Market of the timestamps every symbol of `table` has (after each
    symbol's feature warm-up)."""
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
    return Market(
        features=np.ascontiguousarray(table.values[rows], dtype=np.float32),
        prices=np.ascontiguousarray(table.close[rows], dtype=np.float64),
        timestamps=common,
        symbols=table.symbols,
        feature_names=table.feature_names,
    )


def split_market(
    market: Market, env: EnvironmentSpec, eval_fraction: float
) -> tuple[Market, Market]:
    """(train, eval) parts of an un-normalised `market`, normalised with statistics of the
    training rows (see `load_market`)."""
    n_bars, needed = market.num_bars, required_bars(env)
    n_eval = round(n_bars * eval_fraction)
    n_train = n_bars - n_eval
    context = env.lookback_window - 1
    if n_train < needed or n_eval + context < needed:
        raise DataError(
            f"too few bars: an episode needs lookbackWindow + episodeLength = {needed} bars in "
            f"each of the training and evaluation markets, but the {n_bars} common bars (after "
            f"the feature warm-up) split into {n_train} training and {n_eval} evaluation bars "
            f"(+{context} of history) at evalFraction {eval_fraction}; use more data or a "
            f"shorter episodeLength or lookbackWindow"
        )
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

    return part(slice(0, n_train)), part(slice(n_train - context, n_bars))
