"""The one execution model: what a decision made with information up to bar t earns.

A decision made after bar t closes fills at bar t+1: at its open (`next_open`) or its close
(`next_close`), never at bar t's own close, which the decision's inputs already contain.
Every evaluation path earns returns on the same series of fill prices: the supervised labels
and backtests (`trade_returns`), walk-forward and CV folds (which reuse them) and the RL
environment (whose `Market.prices` is this series, so a step's action fills at the next
bar's fill price). Costs are charged per unit of turnover at `transactionCost + slippage`
everywhere (`cost_rate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tradewind.api.common import Execution

FloatArray = npt.NDArray[np.float64]


def fill_prices(
    open_: npt.NDArray[np.floating[Any]], close: npt.NDArray[np.floating[Any]], execution: Execution
) -> FloatArray:
    """The price at which a decision made at bar t-1 fills, per bar t: the open or the close."""
    prices = open_ if execution == "next_open" else close
    return np.asarray(prices, dtype=np.float64)


def trade_returns(prices: npt.NDArray[np.floating[Any]], horizon: int) -> FloatArray:
    """What a position taken on bar t's information and held `horizon` bars earns:
    prices[t + 1 + horizon] / prices[t + 1] - 1 (fill at the next bar, exit `horizon` fills
    later). NaN for the last `horizon + 1` bars, which have no such trade."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    out = np.full(len(prices), np.nan)
    if len(prices) > horizon + 1:
        out[: -(horizon + 1)] = prices[horizon + 1 :] / prices[1:-horizon] - 1.0
    return out


def bars_after_decision(horizon: int) -> int:
    """Bars after a decision bar that its trade reads: the fill bar plus `horizon` more.
    Splits and folds purge this many bars between a training target and an evaluated one."""
    return horizon + 1


def cost_rate(transaction_cost: float, slippage: float) -> float:
    """Cost per unit of turnover (traded value over equity): commission plus slippage."""
    return transaction_cost + slippage
