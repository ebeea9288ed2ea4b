"""Engineered features per symbol, computed from bars <= t only (rolling and ewm windows).

Every feature is scale-free (ratios to price, z-scores, bounded oscillators), so symbols with
different price levels share one normaliser. Rows before every feature is defined (the
warm-up) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from tradewind.api.common import FEATURES
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.extensions import (
    check_no_lookahead,
    extension_columns,
    extension_values,
    split_features,
    symbol_frame,
)
from tradewind.trainer.data.synthetic import CALM, NO_REGIME, TRENDING, VOLATILE

FloatArray = npt.NDArray[np.float64]

WINDOW = 20
"""Window of sma, ema, bollinger, obv, realized_volatility and volume_zscore."""
RSI_PERIOD = ATR_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BOLLINGER_WIDTH = 2.0

FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "returns": ("returns",),
    "log_returns": ("log_returns",),
    "sma": ("sma_ratio_20",),
    "ema": ("ema_ratio_20",),
    "rsi": ("rsi_14",),
    "macd": ("macd", "macd_signal", "macd_hist"),
    "bollinger": ("bollinger_pct_b", "bollinger_bandwidth"),
    "atr": ("atr_14",),
    "obv": ("obv_zscore_20",),
    "realized_volatility": ("realized_volatility_20",),
    "volume_zscore": ("volume_zscore_20",),
    "high_low_range": ("high_low_range",),
    "ohlcv": ("ohlcv_open", "ohlcv_high", "ohlcv_low", "ohlcv_close", "ohlcv_volume"),
}
"""Columns each feature adds, in the order they appear."""


@dataclass(frozen=True)
class SymbolBars:
    """Bars as float64 arrays, oldest first: (bar,) for one symbol, or (bar, symbol) for
    several symbols that start on the same row (shorter ones padded with trailing NaN)."""

    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray


def feature_columns(features: Iterable[str]) -> tuple[str, ...]:
    """Column names for `features`, in the fixed order of FEATURES whatever the input order,
    then the extension features' (sorted by name)."""
    builtin, extensions = split_features(list(features))
    chosen = set(builtin)
    unknown = chosen - set(FEATURES)
    if unknown:
        raise DataError(f"unknown feature(s) {', '.join(sorted(unknown))}")
    return tuple(
        column for name in FEATURES if name in chosen for column in FEATURE_COLUMNS[name]
    ) + tuple(column for name in extensions for column in extension_columns(name))


def compute_features(bars: SymbolBars, features: Iterable[str]) -> FloatArray:
    """The columns `feature_columns(features)` as the last axis: (bar, column) for one
    symbol, (bar, symbol, column) for several. Warm-up rows are NaN."""
    chosen = set(features)
    feature_columns(chosen)  # validates the names
    columns: list[FloatArray] = []
    for name in FEATURES:
        if name in chosen:
            columns.extend(_CALCULATORS[name](bars))
    return np.stack(columns, axis=-1)


def realized_volatility(close: FloatArray) -> FloatArray:
    """Rolling sample std of log returns over WINDOW bars (NaN during the warm-up)."""
    return _rolling_std(_log_returns(close), WINDOW, ddof=1)


TREND_SCORE = 1.0
"""A window is trending when its log return is at least this many times what its volatility
would move the price by chance over WINDOW bars (|log return| / (volatility x sqrt(WINDOW)))."""
VOLATILE_RATIO = 1.5
"""A window is volatile when its volatility is at least this many times the median of the
symbol's volatility so far."""


def market_regimes(close: FloatArray) -> npt.NDArray[np.int8]:
    """The market regime of each bar of one symbol from its past WINDOW bars, for data that
    does not carry one (the synthetic source's are known): volatile when the realised
    volatility is VOLATILE_RATIO times its median so far, else trending when the window's
    move is TREND_SCORE times what that volatility explains, else calm. Only bars up to each
    row are read (an expanding median), as for features. NO_REGIME during the warm-up."""
    n = len(close)
    out = np.full(n, NO_REGIME, np.int8)
    volatility = realized_volatility(close)
    defined = np.isfinite(volatility) & (volatility > 0)
    if not defined.any():
        return out
    move = np.full(n, np.nan)
    move[WINDOW:] = np.abs(np.log(close[WINDOW:] / close[:-WINDOW]))
    median_so_far = pd.Series(np.where(defined, volatility, np.nan)).expanding().median()
    ratio = volatility / median_so_far.to_numpy()
    score = move / (volatility * np.sqrt(WINDOW))
    known = defined & np.isfinite(score) & np.isfinite(ratio)
    out[known] = CALM
    out[known & (score >= TREND_SCORE)] = TRENDING
    out[known & (ratio >= VOLATILE_RATIO)] = VOLATILE
    return out


# --- the features -------------------------------------------------------------------------


def _returns(bars: SymbolBars) -> list[FloatArray]:
    return [_lagged_ratio(bars.close) - 1.0]


def _log_returns_feature(bars: SymbolBars) -> list[FloatArray]:
    return [_log_returns(bars.close)]


def _sma(bars: SymbolBars) -> list[FloatArray]:
    return [bars.close / _rolling_mean(bars.close, WINDOW) - 1.0]


def _ema(bars: SymbolBars) -> list[FloatArray]:
    return [bars.close / _ema_of(bars.close, WINDOW) - 1.0]


def _rsi(bars: SymbolBars) -> list[FloatArray]:
    change = np.diff(bars.close, axis=0, prepend=np.nan)
    # np.clip keeps the NaN of the first bar, which has no change: the average starts after it.
    average_gain = wilder_average(np.clip(change, 0.0, None), RSI_PERIOD)
    average_loss = wilder_average(np.clip(-change, 0.0, None), RSI_PERIOD)
    # 100 - 100 / (1 + gain / loss), written so that a window without losses gives 100 and
    # a flat window (no gains, no losses) gives the neutral 50.
    return [100.0 * _safe_ratio(average_gain, average_gain + average_loss, fill=0.5)]


def _macd(bars: SymbolBars) -> list[FloatArray]:
    macd_line = _ema_of(bars.close, MACD_FAST) - _ema_of(bars.close, MACD_SLOW)
    signal = _ema_of(macd_line, MACD_SIGNAL)
    return [macd_line / bars.close, signal / bars.close, (macd_line - signal) / bars.close]


def _bollinger(bars: SymbolBars) -> list[FloatArray]:
    middle = _rolling_mean(bars.close, WINDOW)
    half_width = BOLLINGER_WIDTH * _rolling_std(bars.close, WINDOW, ddof=0)
    lower = middle - half_width
    percent_b = _safe_ratio(bars.close - lower, 2.0 * half_width, fill=0.5)
    return [percent_b, 2.0 * half_width / middle]


def _atr(bars: SymbolBars) -> list[FloatArray]:
    previous_close = np.full(bars.close.shape, np.nan)
    previous_close[1:] = bars.close[:-1]
    true_range = np.fmax(
        bars.high - bars.low,
        np.fmax(np.abs(bars.high - previous_close), np.abs(bars.low - previous_close)),
    )
    true_range[0] = np.nan  # no previous close: the first true range is undefined
    return [wilder_average(true_range, ATR_PERIOD) / bars.close]


def _obv(bars: SymbolBars) -> list[FloatArray]:
    direction = np.sign(np.diff(bars.close, axis=0, prepend=bars.close[:1]))
    on_balance_volume = np.cumsum(direction * bars.volume, axis=0)
    return [_rolling_zscore(on_balance_volume, WINDOW)]


def _realized_volatility(bars: SymbolBars) -> list[FloatArray]:
    return [realized_volatility(bars.close)]


def _volume_zscore(bars: SymbolBars) -> list[FloatArray]:
    return [_rolling_zscore(bars.volume, WINDOW)]


def _high_low_range(bars: SymbolBars) -> list[FloatArray]:
    return [(bars.high - bars.low) / bars.close]


def _ohlcv(bars: SymbolBars) -> list[FloatArray]:
    """The bar itself as five channels (the guide's CNN on OHLCV), each without its scale:
    open and close as returns from the previous close, high and low relative to the close,
    volume as log(1 + volume) less its mean over the last WINDOW bars."""
    previous_close = np.full(bars.close.shape, np.nan)
    previous_close[1:] = bars.close[:-1]
    log_volume = np.log1p(np.maximum(bars.volume, 0.0))
    return [
        bars.open / previous_close - 1.0,
        bars.high / bars.close - 1.0,
        bars.low / bars.close - 1.0,
        bars.close / previous_close - 1.0,
        log_volume - _rolling_mean(log_volume, WINDOW),
    ]


_CALCULATORS: dict[str, Callable[[SymbolBars], list[FloatArray]]] = {
    "returns": _returns,
    "log_returns": _log_returns_feature,
    "sma": _sma,
    "ema": _ema,
    "rsi": _rsi,
    "macd": _macd,
    "bollinger": _bollinger,
    "atr": _atr,
    "obv": _obv,
    "realized_volatility": _realized_volatility,
    "volume_zscore": _volume_zscore,
    "high_low_range": _high_low_range,
    "ohlcv": _ohlcv,
}


# --- building blocks ----------------------------------------------------------------------


def wilder_average(values: FloatArray, period: int) -> FloatArray:
    """Wilder's smoothing along axis 0: the first value is the mean of the first `period`
    values (after leading NaNs), then avg[t] = avg[t-1] + (x[t] - avg[t-1]) / period."""
    valid = ~np.isnan(values)
    seed_row = valid.argmax(axis=0) + period - 1
    rows = np.arange(len(values)).reshape(-1, *([1] * (values.ndim - 1)))
    seeded = np.where(rows < seed_row, np.nan, values)
    seeded = np.where(rows == seed_row, _rolling_mean(values, period), seeded)
    smoothed: FloatArray = _pandas(seeded).ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()
    return smoothed


def _pandas(values: FloatArray) -> Any:
    """A Series or DataFrame over `values`, for pandas' rolling and ewm along axis 0."""
    return pd.Series(values) if values.ndim == 1 else pd.DataFrame(values)


def _lagged_ratio(values: FloatArray) -> FloatArray:
    out = np.full(values.shape, np.nan)
    out[1:] = values[1:] / values[:-1]
    return out


def _log_returns(close: FloatArray) -> FloatArray:
    return np.log(_lagged_ratio(close))


def _rolling_mean(values: FloatArray, window: int) -> FloatArray:
    mean: FloatArray = _pandas(values).rolling(window, min_periods=window).mean().to_numpy()
    return mean


def _rolling_std(values: FloatArray, window: int, *, ddof: int) -> FloatArray:
    rolling = _pandas(values).rolling(window, min_periods=window)
    std: FloatArray = rolling.std(ddof=ddof).to_numpy()
    return std


def _ema_of(values: FloatArray, span: int) -> FloatArray:
    ema: FloatArray = (
        _pandas(values).ewm(span=span, adjust=False, min_periods=span).mean().to_numpy()
    )
    return ema


def _rolling_zscore(values: FloatArray, window: int) -> FloatArray:
    deviation = values - _rolling_mean(values, window)
    return _safe_ratio(deviation, _rolling_std(values, window, ddof=0), fill=0.0)


def _safe_ratio(numerator: FloatArray, denominator: FloatArray, *, fill: float) -> FloatArray:
    """numerator / denominator, `fill` where the denominator is 0 (a flat window), NaN where
    either is NaN (the warm-up)."""
    zero = denominator == 0
    ratio = numerator / np.where(zero, 1.0, denominator)
    return np.where(zero & ~np.isnan(numerator), fill, ratio)


# --- every symbol -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureTable:
    """Features of every symbol, stacked: symbol i owns rows offsets[i]:offsets[i+1]."""

    symbols: tuple[str, ...]
    feature_names: tuple[str, ...]
    offsets: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.datetime64]
    values: npt.NDArray[np.float32]
    """(row, feature)."""
    open: FloatArray
    """Open per row: the fill price of `execution: next_open`."""
    close: FloatArray
    """Close per row: the fill price of `execution: next_close`."""
    volatility: npt.NDArray[np.float32]
    """Realised volatility (WINDOW bars) per row, for curriculum learning."""
    regimes: npt.NDArray[np.int8]
    """Market regime per row (synthetic.REGIME_NAMES): the synthetic source's own, else
    `market_regimes`' from the past bars."""

    def rows(self, symbol_index: int) -> slice:
        """Rows of one symbol."""
        return slice(int(self.offsets[symbol_index]), int(self.offsets[symbol_index + 1]))


# Symbols are processed in chunks of about this many bars in all: big enough for pandas to
# work column-wise at full speed, small enough that a chunk's features stay ~100 MB.
_CHUNK_ELEMENTS = 1 << 20
_PRICE_FIELDS = ("open", "high", "low", "close", "volume")


def engineer_features(bars: pd.DataFrame, features: Sequence[str]) -> FeatureTable:
    """Features of each symbol in the tidy bars frame, warm-up rows dropped."""
    names = feature_columns(features)
    codes = bars["symbol"].cat.codes.to_numpy()
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts, stops = np.r_[0, bounds], np.r_[bounds, len(codes)]
    symbols = tuple(str(bars["symbol"].iloc[start]) for start in starts)
    prices = {c: bars[c].to_numpy(np.float64) for c in _PRICE_FIELDS}
    timestamps = bars["timestamp"].to_numpy("datetime64[ns]")
    extensions = split_features(features)[1]
    if extensions:
        first = symbol_frame(prices, timestamps, slice(int(starts[0]), int(stops[0])))
        check_no_lookahead(first, extensions)
    warmed_up: dict[int, tuple[int, FloatArray, FloatArray]] = {}
    for chunk in _chunks_of_similar_length(stops - starts):
        results = _chunk_features(prices, starts[chunk], stops[chunk], features, timestamps)
        for symbol, result in zip(chunk.tolist(), results, strict=True):
            _check_finite(result[1], names, symbols[symbol])
            warmed_up[symbol] = result
    ordered = [warmed_up[i] for i in range(len(symbols))]
    rows = np.concatenate(
        [
            np.arange(start + first, stop)
            for start, stop, (first, _, _) in zip(starts, stops, ordered, strict=True)
        ]
    )
    if "regime" in bars.columns:
        regimes = bars["regime"].to_numpy(np.int8)[rows]
    else:
        regimes = np.concatenate(
            [
                market_regimes(prices["close"][start:stop])[first:]
                for start, stop, (first, _, _) in zip(starts, stops, ordered, strict=True)
            ]
        )
    return FeatureTable(
        symbols=symbols,
        feature_names=names,
        offsets=np.r_[0, np.cumsum([len(matrix) for _, matrix, _ in ordered])].astype(np.int64),
        timestamps=timestamps[rows],
        values=np.concatenate([matrix for _, matrix, _ in ordered]).astype(np.float32),
        open=prices["open"][rows],
        close=prices["close"][rows],
        volatility=np.concatenate([vol for _, _, vol in ordered]).astype(np.float32),
        regimes=regimes,
    )


def _chunk_features(
    prices: dict[str, FloatArray],
    starts: npt.NDArray[np.int64],
    stops: npt.NDArray[np.int64],
    features: Sequence[str],
    timestamps: npt.NDArray[np.datetime64],
) -> list[tuple[int, FloatArray, FloatArray]]:
    """Features of the symbols in rows starts[j]:stops[j], computed side by side in one
    padded (bar, symbol) block: (first complete row, features, volatility) per symbol.
    Extension features are computed symbol by symbol into the same block."""
    lengths = stops - starts
    padded = {c: np.full((int(lengths.max()), len(starts)), np.nan) for c in _PRICE_FIELDS}
    for j, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        for field, column in padded.items():
            column[: stop - start, j] = prices[field][start:stop]
    block = SymbolBars(**padded)
    builtin, extensions = split_features(features)
    matrix = (
        compute_features(block, builtin)
        if builtin
        else np.empty((*block.close.shape, 0), dtype=np.float64)
    )
    if extensions:
        extra = np.full((*block.close.shape, len(feature_columns(extensions))), np.nan)
        for j, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
            frame = symbol_frame(prices, timestamps, slice(start, stop))
            extra[: stop - start, j] = extension_values(frame, extensions)
        matrix = np.concatenate([matrix, extra], axis=-1)
    volatility = realized_volatility(block.close)
    results = []
    for j, n_bars in enumerate(lengths.tolist()):
        first = _first_complete_row(matrix[:n_bars, j], volatility[:n_bars, j])
        results.append((first, matrix[first:n_bars, j], volatility[first:n_bars, j]))
    return results


def _chunks_of_similar_length(lengths: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """Symbol indices grouped so that each group, padded to its longest, has about
    _CHUNK_ELEMENTS bars."""
    order = np.argsort(lengths, kind="stable")
    chunks: list[npt.NDArray[np.int64]] = []
    current: list[int] = []
    longest = 0
    for symbol in order.tolist():
        longest = max(longest, int(lengths[symbol]))
        if current and longest * (len(current) + 1) > _CHUNK_ELEMENTS:
            chunks.append(np.array(current))
            current, longest = [], int(lengths[symbol])
        current.append(symbol)
    if current:
        chunks.append(np.array(current))
    return chunks


def _first_complete_row(matrix: FloatArray, volatility: FloatArray) -> int:
    """Index of the first row where every feature (and the volatility) is defined."""
    complete = np.isfinite(matrix).all(axis=1) & np.isfinite(volatility)
    found = np.flatnonzero(complete)
    return int(found[0]) if found.size else len(matrix)


def _check_finite(matrix: FloatArray, names: Sequence[str], symbol: str) -> None:
    bad_rows, bad_columns = np.nonzero(~np.isfinite(matrix))
    if bad_rows.size:
        raise DataError(
            f"feature {names[bad_columns[0]]} of {symbol} is not finite after the warm-up "
            f"({bad_rows.size} values)"
        )
