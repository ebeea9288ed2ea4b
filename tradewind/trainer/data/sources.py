"""Market data sources -> one tidy frame of OHLCV bars.

Every source gives the same frame: columns symbol (categorical), timestamp (tz-naive
datetime64), open, high, low, close, volume (float64), sorted by symbol then timestamp, one
row per bar; the synthetic source adds `regime` (see `synthetic.REGIME_NAMES`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from tradewind.api.common import DataSource, SyntheticData
from tradewind.extensions import is_extension
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.extensions import read_extension_source
from tradewind.trainer.data.object_store import (
    ObjectStoreClient,
    minio_client_from_env,
    read_object,
)
from tradewind.trainer.data.synthetic import generate_market

log = logging.getLogger(__name__)

BAR_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
INTERVALS: dict[str, pd.Timedelta] = {
    "1m": pd.Timedelta(minutes=1),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "1h": pd.Timedelta(hours=1),
    "1d": pd.Timedelta(days=1),
}

# Bundled files: (package, path inside the package). Located with find_spec, which does
# not import the package (importing arch pulls in scipy and statsmodels).
BUNDLED_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "stocks": (("bokeh_sampledata", "_data/stocks.csv.gz"),),
    "indices": (("arch", "data/sp500/sp500.csv.gz"), ("arch", "data/nasdaq/nasdaq.csv.gz")),
    "eurusd": (("gym_anytrading", "datasets/data/FOREX_EURUSD_1H_ASK.csv"),),
}
_INDEX_SYMBOLS = {"sp500": "SP500", "nasdaq": "NASDAQ"}


def load_bars(
    source: DataSource,
    *,
    synthetic_seed: int = 0,
    s3_client: ObjectStoreClient | None = None,
) -> pd.DataFrame:
    """The bars `source` selects: its symbols, dates and interval, as the tidy frame.

    `synthetic_seed` seeds the generator when `source.synthetic` is unset; `s3_client`
    (a `minio.Minio` or anything with `get_object`) reads `s3://` sources, by default a
    client built from the environment."""
    bars = read_source(source, synthetic_seed=synthetic_seed, s3_client=s3_client)
    bars = select_symbols(bars, source.symbols, source.source)
    bars = select_dates(bars, source.start, source.end)
    return resample_bars(bars, source.interval)


def read_source(
    source: DataSource,
    *,
    synthetic_seed: int = 0,
    s3_client: ObjectStoreClient | None = None,
) -> pd.DataFrame:
    """Every bar of the source, unfiltered, as the tidy frame. An extension's source is
    called with `seed=synthetic_seed` (the run's seed)."""
    name = source.source
    if name == "stocks":
        raw = _read_stocks()
    elif name == "indices":
        raw = _read_indices()
    elif name == "eurusd":
        raw = _read_eurusd()
    elif name == "synthetic":
        settings = source.synthetic or SyntheticData(seed=synthetic_seed)
        # Generated at the requested interval, so numBars is the number of bars trained on.
        raw = generate_market(settings, interval=source.interval).to_frame()
    elif name.startswith("file://"):
        raw = _read_table(Path(name.removeprefix("file://")).read_bytes, name)
    elif name.startswith("s3://"):
        client = s3_client if s3_client is not None else minio_client_from_env()
        raw = _read_table(lambda: read_object(name, client), name)
    elif is_extension(name):
        raw = read_extension_source(name, synthetic_seed)
    else:
        raise DataError(f"unknown data source {name!r}")
    return tidy_bars(raw, name)


def bundled_file(package: str, relative: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise DataError(f"the bundled data needs the {package!r} package; pip install it")
    path = Path(next(iter(locations))) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package!r} package")
    return path


def _read_stocks() -> pd.DataFrame:
    ((package, relative),) = BUNDLED_FILES["stocks"]
    raw = pd.read_csv(bundled_file(package, relative))
    raw["Date"] = pd.to_datetime(raw["Date"], format="%Y-%m-%d")
    return _split_adjusted(raw.rename(columns={"Ticker": "symbol", "Date": "timestamp"}))


def _read_indices() -> pd.DataFrame:
    frames = []
    for package, relative in BUNDLED_FILES["indices"]:
        raw = pd.read_csv(bundled_file(package, relative))
        raw["Date"] = pd.to_datetime(raw["Date"], format="%m/%d/%Y")
        raw["symbol"] = _INDEX_SYMBOLS[Path(relative).parent.name]
        frames.append(_split_adjusted(raw.rename(columns={"Date": "timestamp"})))
    return pd.concat(frames, ignore_index=True)


def _read_eurusd() -> pd.DataFrame:
    ((package, relative),) = BUNDLED_FILES["eurusd"]
    raw = pd.read_csv(bundled_file(package, relative))
    raw["Time"] = pd.to_datetime(raw["Time"], format="%d.%m.%Y %H:%M:%S.%f")
    raw["symbol"] = "EURUSD"
    return raw.rename(columns={"Time": "timestamp"})


def _split_adjusted(raw: pd.DataFrame) -> pd.DataFrame:
    """Prices scaled by Adj Close / Close, so splits (AAPL 2:1 in 2000 and 2005) are not
    100 % one-day returns; volume is scaled the other way to keep the traded value."""
    factor = raw["Adj Close"] / raw["Close"]
    for column in ("Open", "High", "Low", "Close"):
        raw[column] = raw[column] * factor
    raw["Volume"] = raw["Volume"] / factor
    return raw.drop(columns=["Adj Close"])


def _read_table(read_bytes: Callable[[], bytes], uri: str) -> pd.DataFrame:
    """A CSV (optionally gzipped) or Parquet file, chosen by the name's suffix."""
    lowered = uri.lower()
    if not lowered.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise DataError(f"{uri}: expected a .csv, .csv.gz, .parquet or .pq file")
    try:
        content = read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{uri}: no such file") from err
    buffer = io.BytesIO(content)
    try:
        if lowered.endswith((".parquet", ".pq")):
            return pd.read_parquet(buffer)
        compression = "gzip" if lowered.endswith(".gz") else None
        return pd.read_csv(buffer, compression=compression)
    except (ValueError, OSError) as err:
        raise DataError(f"{uri}: cannot parse the file: {err}") from err


def tidy_bars(raw: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Bring a frame with (any-case) OHLCV columns into the tidy form, checking its values."""
    frame = raw.rename(columns={c: str(c).lower() for c in raw.columns})
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {', '.join(missing)}")
    frame = frame[[*BAR_COLUMNS, *(["regime"] if "regime" in frame.columns else [])]]
    converted = {"timestamp": _naive_timestamps(frame["timestamp"], origin)}
    for column in (*PRICE_COLUMNS, "volume"):
        if frame[column].dtype != np.float64:
            converted[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    if not isinstance(frame["symbol"].dtype, pd.CategoricalDtype):
        converted["symbol"] = frame["symbol"].astype(str).astype("category")
    frame = _drop_incomplete_rows(frame.assign(**converted), origin)
    _check_values(frame, origin)
    return _sorted_without_duplicates(frame, origin)


def _naive_timestamps(values: pd.Series, origin: str) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[ns]")
    try:
        # Offsets are converted to UTC; timestamps without one are taken as they are.
        parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        raise DataError(f"{origin}: cannot parse timestamp column: {err}") from err
    return parsed.dt.tz_localize(None).astype("datetime64[ns]")


def _drop_incomplete_rows(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    incomplete = frame[list(BAR_COLUMNS)].isna().any(axis=1)
    if incomplete.any():
        log.warning("%s: dropping %d rows with missing values", origin, int(incomplete.sum()))
        frame = frame[~incomplete]
    return frame


def _check_values(frame: pd.DataFrame, origin: str) -> None:
    if frame.empty:
        raise DataError(f"{origin}: no bars")
    for column in PRICE_COLUMNS:
        prices = frame[column].to_numpy()
        if not (np.isfinite(prices).all() and (prices > 0).all()):
            raise DataError(f"{origin}: {column} prices must be positive and finite")
    volume = frame["volume"].to_numpy()
    if not (np.isfinite(volume).all() and (volume >= 0).all()):
        raise DataError(f"{origin}: volume must be non-negative and finite")


def _sorted_without_duplicates(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Sorted by symbol then time (skipping the sort when it already is); two bars of a
    symbol at one time is a DataError."""
    codes = frame["symbol"].cat.codes.to_numpy()
    times = frame["timestamp"].to_numpy()
    same_symbol = codes[1:] == codes[:-1]
    in_order = (codes[1:] >= codes[:-1]).all() and (
        times[1:][same_symbol] > times[:-1][same_symbol]
    ).all()
    if not in_order:
        frame = frame.sort_values(["symbol", "timestamp"], kind="stable")
        codes = frame["symbol"].cat.codes.to_numpy()
        times = frame["timestamp"].to_numpy()
        same_symbol = codes[1:] == codes[:-1]
    duplicated = np.flatnonzero(same_symbol & (times[1:] == times[:-1]))
    if duplicated.size:
        first = frame.iloc[duplicated[0]]
        raise DataError(
            f"{origin}: {duplicated.size} duplicate bars, e.g. {first['symbol']} at "
            f"{first['timestamp']}"
        )
    return frame.reset_index(drop=True)


def available_symbols(bars: pd.DataFrame) -> list[str]:
    """Symbols present in a tidy frame, sorted."""
    return sorted(str(s) for s in bars["symbol"].unique())


def select_symbols(bars: pd.DataFrame, symbols: Sequence[str], origin: str) -> pd.DataFrame:
    """The bars of `symbols` (all when empty); an unknown symbol is a DataError."""
    if not symbols:
        return bars
    available = available_symbols(bars)
    unknown = sorted(set(symbols) - set(available))
    if unknown:
        shown = ", ".join(available[:20]) + (
            f", ... ({len(available)} in all)" if len(available) > 20 else ""
        )
        raise DataError(
            f"unknown symbol(s) {', '.join(unknown)} in source {origin!r}; available: {shown}"
        )
    selected = bars[bars["symbol"].isin(list(symbols))].copy()
    selected["symbol"] = selected["symbol"].cat.remove_unused_categories()
    return selected.reset_index(drop=True)


def select_dates(bars: pd.DataFrame, start: dt.date | None, end: dt.date | None) -> pd.DataFrame:
    """Bars from `start` to `end`, both days included; none left is a DataError."""
    if start is None and end is None:
        return bars
    keep = np.ones(len(bars), dtype=bool)
    timestamps = bars["timestamp"]
    if start is not None:
        keep &= (timestamps >= pd.Timestamp(start)).to_numpy()
    if end is not None:
        keep &= (timestamps < pd.Timestamp(end) + pd.Timedelta(days=1)).to_numpy()
    if not keep.any():
        raise DataError(
            f"no bars between {start or 'the start'} and {end or 'the end'}; the data covers "
            f"{timestamps.min().date()} to {timestamps.max().date()}"
        )
    selected = bars[keep].copy()
    selected["symbol"] = selected["symbol"].cat.remove_unused_categories()
    return selected.reset_index(drop=True)


def source_bar_spacing(bars: pd.DataFrame) -> pd.Timedelta:
    """The typical time between consecutive bars of a symbol (the median gap)."""
    gaps = bars["timestamp"].diff()[bars["symbol"].eq(bars["symbol"].shift())]
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        raise DataError("cannot tell the bar interval: every symbol has a single bar")
    return pd.Timedelta(gaps.median())


def resample_bars(bars: pd.DataFrame, interval: str) -> pd.DataFrame:
    """Bars aggregated to `interval` when it is coarser than the source's; a finer interval
    is a DataError (bars cannot be invented)."""
    target = INTERVALS[interval]
    spacing = source_bar_spacing(bars)
    if target < spacing:
        coarsest = [name for name, step in INTERVALS.items() if step >= spacing]
        hint = f"use {coarsest[0]} or coarser" if coarsest else "no interval is coarse enough"
        raise DataError(
            f"interval {interval} is finer than the source's bars (every {_describe(spacing)}); "
            f"{hint}"
        )
    if target == spacing:
        return bars
    aggregations = {
        "open": ("open", "first"),
        "high": ("high", "max"),
        "low": ("low", "min"),
        "close": ("close", "last"),
        "volume": ("volume", "sum"),
    }
    if "regime" in bars.columns:
        aggregations["regime"] = ("regime", "last")
    grouped = bars.groupby(["symbol", pd.Grouper(key="timestamp", freq=target)], observed=True)
    out = grouped.agg(**aggregations).dropna(subset=["close"]).reset_index()
    return out.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def _describe(spacing: pd.Timedelta) -> str:
    names = [name for name, step in INTERVALS.items() if step == spacing]
    return names[0] if names else str(spacing)


@dataclass(frozen=True)
class AlignedBars:
    """Bars of several symbols on their common timestamps."""

    values: npt.NDArray[np.float64]
    """(time, symbol, field)."""
    timestamps: npt.NDArray[np.datetime64]
    """(time,), ascending."""
    symbols: tuple[str, ...]
    fields: tuple[str, ...]


def align_symbols(
    bars: pd.DataFrame, fields: Sequence[str] = ("open", "high", "low", "close", "volume")
) -> AlignedBars:
    """Inner-join the symbols on timestamps: only bars every symbol has are kept."""
    symbols = available_symbols(bars)
    timestamps = bars["timestamp"].to_numpy()
    unique, counts = np.unique(timestamps, return_counts=True)
    common = unique[counts == len(symbols)]
    if common.size == 0:
        raise DataError(f"symbols {', '.join(symbols)} share no timestamps")
    shared = bars[np.isin(timestamps, common)].sort_values(["symbol", "timestamp"], kind="stable")
    # Sorted by symbol then time, with exactly one row per (symbol, common timestamp).
    values = shared[list(fields)].to_numpy(dtype=np.float64)
    values = values.reshape(len(symbols), common.size, len(fields)).transpose(1, 0, 2)
    return AlignedBars(np.ascontiguousarray(values), common, tuple(symbols), tuple(fields))
