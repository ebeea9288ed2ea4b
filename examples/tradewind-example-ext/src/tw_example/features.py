"""`tw_example.range_position`: where the close sits in the last 10 bars' high-low range."""

from __future__ import annotations

import pandas as pd

from tradewind.extensions import feature

WINDOW = 10


@feature()
def range_position(bars: pd.DataFrame) -> pd.Series:
    """0 at the lowest low of the last WINDOW bars, 1 at the highest high (bars <= t only:
    trailing rolling windows). NaN during the warm-up; Tradewind drops those rows."""
    low = bars["low"].rolling(WINDOW).min()
    high = bars["high"].rolling(WINDOW).max()
    width = (high - low).where(high > low)
    return ((bars["close"] - low) / width).fillna(0.5).where(low.notna())
