"""The trading backtest of a trained classifier on a split: the model beside buy-and-hold and
a seeded random signal, overall and per walk-forward step, after costs."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tradewind.api.training import EvaluationSpec
from tradewind.trainer.data.dataset import SupervisedSplit
from tradewind.trainer.evaluation import (
    FloatArray,
    TradeSamples,
    bars_per_year,
    compare_strategies,
    periods,
    portfolio_returns,
    strategy_returns,
    strategy_signals,
    trade_samples,
)
from tradewind.trainer.execution import cost_rate

SHARPE_KEYS = ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "psr")
"""What a table row shows of a Sharpe ratio: the ratio, its interval and its PSR."""
RISK_KEYS = ("max_drawdown", "win_rate")
"""What a walk-forward row shows besides: the model's worst drawdown and share of winning
trades in the period."""


def cost_of(evaluation: EvaluationSpec) -> float:
    """Cost per unit of turnover of a TrainingRun's backtests (as in the RL environment)."""
    return cost_rate(evaluation.transaction_cost, evaluation.slippage)


def _trades(
    split: SupervisedSplit, horizon: int, rows: npt.NDArray[np.int64] | None = None
) -> TradeSamples:
    pick = slice(None) if rows is None else rows
    return trade_samples(
        split.symbol_ids[pick], split.timestamps[pick], split.forward_returns[pick], horizon
    )


def backtest(
    predicted: npt.NDArray[np.int64],
    split: SupervisedSplit,
    horizon: int,
    cost: float,
    walk_forward_step: int,
    seed: int,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Model vs buy-and-hold vs random on the split, overall and per walk-forward step (its
    first and last bar's dates, each strategy's return, the model's Sharpe ratio with its
    interval and PSR, drawdown and win rate); `cost` per unit of turnover (`cost_of`)."""
    ppy = bars_per_year(split.timestamps) / horizon
    overall = compare_strategies(predicted, _trades(split, horizon), cost, ppy, seed)
    rows = []
    for i, group in enumerate(periods(split.timestamps, walk_forward_step)):
        table = compare_strategies(
            predicted[group], _trades(split, horizon, group), cost, ppy, seed
        )
        returns = {f"{k}_return": table[k]["total_return"] for k in table}
        model = {f"model_{k}": table["model"][k] for k in (*SHARPE_KEYS, *RISK_KEYS)}
        bars = split.timestamps[group]
        dates = {"test_from": str(bars.min())[:10], "test_to": str(bars.max())[:10]}
        rows.append({"period": i, **dates, **returns, **model})
    return overall, rows


def strategy_equity(
    predicted: npt.NDArray[np.int64], split: SupervisedSplit, horizon: int, cost: float, seed: int
) -> dict[str, FloatArray]:
    """Per-period portfolio returns of each strategy on the split (for equity curves)."""
    trades = _trades(split, horizon)
    return {
        name: portfolio_returns(strategy_returns(positions, trades, cost), trades)
        for name, positions in strategy_signals(predicted, trades, seed).items()
    }
