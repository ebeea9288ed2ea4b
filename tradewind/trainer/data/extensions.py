"""Extension features and data sources (tradewind.extensions) in the data pipeline: their
columns, their values per symbol (checked for shape, and once for look-ahead), their bars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from tradewind.extensions import ExtensionError, Kind, is_extension, registry
from tradewind.trainer.data.errors import DataError

FloatArray = npt.NDArray[np.float64]
OHLCV = ("open", "high", "low", "close", "volume")


def split_features(features: Sequence[str]) -> tuple[list[str], list[str]]:
    """(built-in names as given, extension names sorted): extension columns come after the
    built-ins' in a fixed order whatever the manifest's order."""
    return (
        [f for f in features if not is_extension(f)],
        sorted(f for f in features if is_extension(f)),
    )


def _load(kind: Kind, name: str) -> Any:
    try:
        return registry().load(kind, name)
    except ExtensionError as exc:
        raise DataError(str(exc)) from exc


def extension_columns(name: str) -> tuple[str, ...]:
    """Columns of an extension feature: its name, or `<name>.<column>` per declared column."""
    columns = getattr(_load("feature", name), "columns", None)
    return (name,) if not columns else tuple(f"{name}.{c}" for c in columns)


def symbol_frame(prices: dict[str, FloatArray], timestamps: Any, rows: slice) -> pd.DataFrame:
    """One symbol's bars as the frame an extension feature reads: OHLCV columns, oldest
    first, indexed by timestamp."""
    index = pd.DatetimeIndex(timestamps[rows], name="timestamp")
    return pd.DataFrame({c: prices[c][rows] for c in OHLCV}, index=index)


def extension_values(frame: pd.DataFrame, names: Sequence[str]) -> FloatArray:
    """(bar, column) values of the extension features `names` on one symbol's frame."""
    blocks = [_feature_values(name, _load("feature", name), frame) for name in names]
    return np.concatenate(blocks, axis=1) if blocks else np.empty((len(frame), 0))


def _feature_values(name: str, function: Callable[..., Any], frame: pd.DataFrame) -> FloatArray:
    result = function(frame.copy())
    declared = getattr(function, "columns", None)
    if isinstance(result, pd.Series):
        if declared:
            raise DataError(f"feature {name} returned a Series; it declares columns {declared}")
        result = result.to_frame()
    elif isinstance(result, pd.DataFrame):
        if not declared or sorted(map(str, result.columns)) != sorted(declared):
            expected = list(declared) if declared else "a Series (it declares no columns)"
            raise DataError(
                f"feature {name} returned columns {list(result.columns)}; expected {expected}"
            )
        result = result[list(declared)]
    else:
        raise DataError(f"feature {name} returned {type(result).__name__}, not a Series/DataFrame")
    if len(result) != len(frame) or not result.index.equals(frame.index):
        raise DataError(
            f"feature {name} must return one row per bar, on the bars' index "
            f"({len(frame)} rows; got {len(result)})"
        )
    try:
        values: FloatArray = result.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"feature {name} returned values that are not numbers: {exc}") from exc
    return values


def check_no_lookahead(frame: pd.DataFrame, names: Sequence[str]) -> None:
    """Refuse an extension feature whose values on the first half of `frame` change when the
    second half is there too: a feature at bar t may read bars <= t only."""
    cut = len(frame) // 2
    if cut < 2:
        return
    for name in names:
        function = _load("feature", name)
        whole = _feature_values(name, function, frame)[:cut]
        prefix = _feature_values(name, function, frame.iloc[:cut])
        same = np.isclose(whole, prefix, rtol=1e-6, atol=1e-12, equal_nan=True)
        if not same.all():
            bar = int(np.flatnonzero(~same.all(axis=1))[0])
            raise DataError(
                f"feature {name} reads later bars: its value at {frame.index[bar]} changes when "
                "the bars after it are added (a feature at bar t may use bars <= t only)"
            )


def read_extension_source(name: str, seed: int) -> pd.DataFrame:
    """The bars of an extension data source: `source(seed=seed)`."""
    frame = _load("data_source", name)(seed=seed)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"data source {name} returned {type(frame).__name__}, not a DataFrame")
    return frame


def extension_fingerprint(kind: Kind, name: str, seed: int) -> dict[str, Any]:
    """What identifies an extension's output for the feature cache: its package's name and
    version, the seed, and its own `fingerprint(seed=)` when it has one (a source whose data
    changes under the same version)."""
    own = getattr(_load(kind, name), "fingerprint", None)
    return {
        "extension": name,
        "package": registry().distribution(kind, name),
        "seed": seed,
        **({"own": own(seed=seed)} if callable(own) else {}),
    }
