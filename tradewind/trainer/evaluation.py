"""Trading evaluation of a classifier's signals: per-period returns, Sharpe, Sortino, max
drawdown, win rate and turnover after costs, beside buy-and-hold and a random baseline.

Signals are Sell/Hold/Buy -> position -1/0/+1 per symbol. A signal on bar t's information
fills at bar t+1 and is held for `predictionHorizon` bars (`tradewind.trainer.execution`), so
the portfolio rebalances on one calendar grid shared by all symbols: every horizon-th bar of
the split's calendar (the distinct bars of all its samples) from its first bar. A symbol
trades at the grid bars it has a sample at (one listed later joins at the next grid bar), so
the periods do not overlap, no return is counted twice and there are at most
bars / horizon of them, as the annualisation (bars per year / horizon) assumes. Every Sharpe
ratio comes with its stationary-bootstrap interval and PSR (`tradewind.significance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tradewind.significance import sharpe_stats

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TradeSamples:
    """Non-overlapping trades: one row per (symbol, period)."""

    symbol_ids: npt.NDArray[np.int64]
    forward_returns: FloatArray
    timestamps: npt.NDArray[np.datetime64]
    order: npt.NDArray[np.int64]
    """Positions into the split's samples (chronological within each symbol)."""


def trade_samples(
    symbol_ids: npt.NDArray[np.int64], timestamps: npt.NDArray[np.datetime64],
    forward_returns: npt.NDArray[np.floating], horizon: int,
) -> TradeSamples:  # fmt: skip
    """The samples at the rebalance bars: every horizon-th bar of the calendar (the distinct
    bars of all symbols' samples) from its first, each symbol at those of them it has a
    sample at; grouped by symbol, in time order within each."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    calendar = np.unique(timestamps)
    on_grid = np.searchsorted(calendar, timestamps) % horizon == 0
    keep: list[npt.NDArray[np.int64]] = []
    for sym in np.unique(symbol_ids):
        idx = np.flatnonzero((symbol_ids == sym) & on_grid)
        idx = idx[np.argsort(timestamps[idx], kind="stable")]
        keep.append(idx)
    order = np.concatenate(keep) if keep else np.empty(0, np.int64)
    return TradeSamples(
        symbol_ids[order], forward_returns[order].astype(np.float64), timestamps[order], order
    )


def strategy_returns(positions: FloatArray, trades: TradeSamples, cost: float) -> FloatArray:
    """Return of each period after proportional costs on position changes (per symbol)."""
    out = np.empty_like(positions)
    for sym in np.unique(trades.symbol_ids):
        m = trades.symbol_ids == sym
        pos = positions[m]
        turnover = np.abs(np.diff(pos, prepend=0.0))
        out[m] = pos * trades.forward_returns[m] - cost * turnover
    return out


def portfolio_returns(returns: FloatArray, trades: TradeSamples) -> FloatArray:
    """Equal-weight portfolio over symbols: the mean return of the trades entered at each
    rebalance bar (`trade_samples`), in time order; one period per rebalance bar at which
    some symbol trades."""
    bars, index = np.unique(trades.timestamps, return_inverse=True)
    sums = np.bincount(index, weights=returns, minlength=len(bars))
    return sums / np.bincount(index, minlength=len(bars))


def performance(
    portfolio: FloatArray, trades: FloatArray, positions: FloatArray, periods_per_year: float
) -> dict[str, float]:
    """Total return, annualised Sharpe (with its interval, PSR and the moments a Deflated
    Sharpe Ratio needs: `SharpeStats.as_metrics`) and Sortino (mean over the downside
    deviation sqrt(mean(min(r, 0)^2)) of all periods) and max drawdown of the portfolio's
    per-period returns; win rate and turnover of the individual trades."""
    stats = sharpe_stats(portfolio, periods_per_year).as_metrics()
    if len(portfolio) == 0:
        keys = ("total_return", "sortino", "max_drawdown", "win_rate", "turnover")
        return dict.fromkeys(keys, 0.0) | stats
    equity = np.cumprod(1.0 + portfolio)
    scale = np.sqrt(periods_per_year)
    # downside deviation about a zero target over ALL periods: sqrt(mean(min(r, 0)^2))
    down_std = float(np.sqrt(np.mean(np.minimum(portfolio, 0.0) ** 2)))
    traded = positions != 0
    return {
        "total_return": float(equity[-1] - 1.0),
        **stats,
        "sortino": float(portfolio.mean() / down_std * scale) if down_std > 0 else 0.0,
        "max_drawdown": max_drawdown(portfolio),
        "win_rate": float(np.mean(trades[traded] > 0)) if traded.any() else 0.0,
        "turnover": float(np.mean(np.abs(np.diff(positions, prepend=0.0)))),
    }


def max_drawdown(returns: FloatArray) -> float:
    """The largest fall of the compounded per-period `returns` from a running peak (0 for
    none)."""
    if len(returns) == 0:
        return 0.0
    equity = np.cumprod(1.0 + returns)
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity)))


def strategy_signals(
    predicted_classes: npt.NDArray[np.int64], trades: TradeSamples, seed: int = 0
) -> dict[str, FloatArray]:
    """Positions of the model, buy-and-hold and a seeded random signal on the trades."""
    rng = np.random.default_rng(seed)
    return {
        "model": predicted_classes[trades.order].astype(np.float64) - 1.0,
        "buy_and_hold": np.ones(len(trades.order)),
        "random": rng.integers(-1, 2, len(trades.order)).astype(np.float64),
    }


def compare_strategies(
    predicted_classes: npt.NDArray[np.int64], trades: TradeSamples, cost: float,
    periods_per_year: float, seed: int = 0,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """The model against buy-and-hold and a seeded random signal, after costs."""
    signals = strategy_signals(predicted_classes, trades, seed)
    out = {}
    for name, pos in signals.items():
        per_trade = strategy_returns(pos, trades, cost)
        out[name] = performance(
            portfolio_returns(per_trade, trades), per_trade, pos, periods_per_year
        )
    return out


def periods(timestamps: npt.NDArray[np.datetime64], step: int) -> list[npt.NDArray[np.int64]]:
    """Sample positions grouped into consecutive periods of `step` distinct bars (the
    walk-forward steps over out-of-sample data)."""
    bars = np.unique(timestamps)
    groups = []
    for start in range(0, len(bars), step):
        lo, hi = bars[start], bars[min(start + step, len(bars)) - 1]
        groups.append(np.flatnonzero((timestamps >= lo) & (timestamps <= hi)))
    return [g for g in groups if len(g)]


def bars_per_year(timestamps: npt.NDArray[np.datetime64]) -> float:
    """Bars per calendar year, from the data itself (252 for daily stock bars)."""
    bars = np.unique(timestamps)
    if len(bars) < 2:
        return 252.0
    years = (bars[-1] - bars[0]) / np.timedelta64(365, "D")
    return float(len(bars) / years) if years > 0 else 252.0
