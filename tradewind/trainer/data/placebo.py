"""Placebo markets: generated bars, matched to a real data set, with a known answer.

Each market keeps the reference's symbols, timestamps, first prices and per-symbol
volatility of close-to-close log returns, and replaces the prices:

- `random_walk`: a driftless random walk. Nothing is predictable; no path may find an edge.
- `reversal`: the same walk plus a transient on every close that is gone before the next bar
  can be traded (the next open is on the walk; the next close carries a fresh transient).
  Close-to-close returns are strongly negatively autocorrelated (lag-1 correlation -1/3), so a
  signal that fills at the signal bar's own close looks brilliant, but nothing filled at the
  next open or close can earn it. No path with next-bar execution may find an edge.
- `planted_edge`: a walk whose drift keeps its sign for tens of bars (a regime of
  PLANTED_DRIFT x sigma per bar, flipping with probability 1 / PLANTED_REGIME_BARS per bar).
  Recent returns tell the sign, and it persists past the next bar: an edge tradable with
  next-bar execution. Every path should find it.

Each bar is an overnight move (OVERNIGHT_SHARE of the variance) to the open, then an intraday
move to the close; highs and lows reach beyond both; volumes are log-normal. The same markets
drive the project's tests and `tradewind placebo`.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

PlaceboKind = Literal["random_walk", "reversal", "planted_edge"]
PLACEBO_KINDS: tuple[PlaceboKind, ...] = get_args(PlaceboKind)
HAS_EDGE: dict[PlaceboKind, bool] = {"random_walk": False, "reversal": False, "planted_edge": True}
"""Whether a next-bar strategy can earn anything on the market."""

OVERNIGHT_SHARE = 0.3
"""Share of a bar's variance that happens between the previous close and the open."""
REVERSAL_SCALE = 1.0
"""Transient on each close, in units of the walk's per-bar volatility."""
PLANTED_DRIFT = 0.5
"""Drift per bar of the planted edge, in units of the per-bar volatility."""
PLANTED_REGIME_BARS = 40.0
"""Mean bars between flips of the planted drift's sign."""
MIN_VOLATILITY = 1e-4
"""Per-bar volatility used for a symbol whose reference prices barely move."""

FloatArray = npt.NDArray[np.float64]


def placebo_bars(reference: pd.DataFrame, kind: PlaceboKind, seed: int = 0) -> pd.DataFrame:
    """Bars of a `kind` market with the symbols, timestamps, first closes and volatility of
    the tidy `reference` bars (columns symbol, timestamp, open, high, low, close, volume)."""
    if kind not in PLACEBO_KINDS:
        raise ValueError(f"unknown placebo market {kind!r}; one of {', '.join(PLACEBO_KINDS)}")
    frames = []
    for number, (symbol, bars) in enumerate(reference.groupby("symbol", sort=True, observed=True)):
        bars = bars.sort_values("timestamp")
        close = bars["close"].to_numpy(np.float64)
        rng = np.random.default_rng([seed, number, PLACEBO_KINDS.index(kind)])
        prices = _symbol_prices(kind, len(close), _volatility(close), float(close[0]), rng)
        frames.append(
            pd.DataFrame({"symbol": symbol, "timestamp": bars["timestamp"].to_numpy(), **prices})
        )
    out = pd.concat(frames, ignore_index=True)
    out["symbol"] = out["symbol"].astype("category")
    return out


def _volatility(close: FloatArray) -> float:
    log_returns = np.diff(np.log(close[np.isfinite(close) & (close > 0)]))
    sigma = float(np.std(log_returns)) if len(log_returns) > 1 else 0.0
    return max(sigma, MIN_VOLATILITY)


def _symbol_prices(
    kind: PlaceboKind, n_bars: int, sigma: float, first: float, rng: np.random.Generator
) -> dict[str, FloatArray]:
    """open, high, low, close, volume of one symbol."""
    transient = REVERSAL_SCALE if kind == "reversal" else 0.0
    # the walk's volatility, so that close-to-close returns have the reference's volatility
    walk_sigma = sigma / np.sqrt(1.0 + 2.0 * transient**2)
    drift = _planted_drift(n_bars, walk_sigma, rng) if kind == "planted_edge" else 0.0
    overnight = drift * OVERNIGHT_SHARE + walk_sigma * np.sqrt(OVERNIGHT_SHARE) * (
        rng.standard_normal(n_bars)
    )
    intraday = drift * (1 - OVERNIGHT_SHARE) + walk_sigma * np.sqrt(1 - OVERNIGHT_SHARE) * (
        rng.standard_normal(n_bars)
    )
    overnight[0] = 0.0
    walk_close = np.cumsum(overnight + intraday)
    walk_open = walk_close - intraday
    log_close = walk_close + transient * walk_sigma * rng.standard_normal(n_bars)
    open_, close = first * np.exp(walk_open), first * np.exp(log_close)
    reach = np.abs(rng.standard_normal((2, n_bars))) * sigma / 2
    return {
        "open": open_,
        "high": np.maximum(open_, close) * np.exp(reach[0]),
        "low": np.minimum(open_, close) / np.exp(reach[1]),
        "close": close,
        "volume": 1e6 * np.exp(0.3 * rng.standard_normal(n_bars)),
    }


def _planted_drift(n_bars: int, sigma: float, rng: np.random.Generator) -> FloatArray:
    """PLANTED_DRIFT x sigma per bar, its sign flipping at random (mean PLANTED_REGIME_BARS
    bars between flips)."""
    flips = rng.random(n_bars) < 1.0 / PLANTED_REGIME_BARS
    first = 1.0 if rng.random() < 0.5 else -1.0
    sign: FloatArray = np.where(np.cumsum(flips) % 2 == 0, first, -first)
    return PLANTED_DRIFT * sigma * sign
