"""`tw_example.random_walk`: seeded daily bars of three random-walk symbols."""

from __future__ import annotations

import numpy as np
import pandas as pd

SYMBOLS = ("WALK_A", "WALK_B", "WALK_C")
BARS = 1500


def random_walk(*, seed: int) -> pd.DataFrame:
    """The standard bars frame (symbol, timestamp, open, high, low, close, volume); the same
    seed gives the same bars."""
    rng = np.random.default_rng(seed)
    timestamps = pd.bdate_range("2015-01-01", periods=BARS)
    frames = []
    for symbol in SYMBOLS:
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0002, 0.01, BARS)))
        open_ = close * np.exp(rng.normal(0.0, 0.002, BARS))
        spread = np.abs(rng.normal(0.0, 0.005, BARS))
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "timestamp": timestamps,
                    "open": open_,
                    "high": np.maximum(open_, close) * (1 + spread),
                    "low": np.minimum(open_, close) * (1 - spread),
                    "close": close,
                    "volume": rng.integers(1_000, 10_000, BARS).astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
