"""The backtest's portfolio trades on one calendar grid shared by all symbols (every
horizon-th bar of the split's calendar), so its periods never overlap and number no more than
the calendar holds, whenever each symbol's samples start or have gaps."""

import math

import numpy as np
import pytest

from tradewind.trainer import backtest as bt
from tradewind.trainer.data.dataset import SupervisedSplit
from tradewind.trainer.evaluation import (
    compare_strategies,
    performance,
    portfolio_returns,
    strategy_returns,
    trade_samples,
)

H = 5
START = np.datetime64("2020-01-01")


def _bars(positions: list[int] | np.ndarray) -> np.ndarray:
    return START + np.asarray(positions).astype("timedelta64[D]")


def _split(symbols: list[int], bars: list[int], returns: list[float]) -> SupervisedSplit:
    """Samples of symbol `symbols[i]` at calendar bars `range(bars[i], n)`, each earning
    `returns[i]` per trade."""
    n = 40
    sym = np.concatenate([np.full(n - b, s) for s, b in zip(symbols, bars, strict=True)])
    ts = np.concatenate([_bars(np.arange(b, n)) for b in bars])
    fwd = np.concatenate([np.full(n - b, r) for b, r in zip(bars, returns, strict=True)])
    m = len(sym)
    return SupervisedSplit(
        windows=np.zeros((m, 1, 1), np.float32), window_index=np.arange(m),
        labels=np.full(m, 2), forward_returns=fwd.astype(np.float32),
        volatility=np.zeros(m, np.float32), regimes=np.full(m, -1, np.int8),
        symbol_ids=sym.astype(np.int64), timestamps=ts,
    )  # fmt: skip


def _buy_and_hold(split: SupervisedSplit) -> dict[str, float]:
    overall, _ = bt.backtest(np.full(len(split), 2, np.int64), split, H, 0.0, 1000, 0)
    return overall["buy_and_hold"]


def test_a_symbol_listed_later_joins_the_shared_rebalance_grid() -> None:
    split = _split([0, 1], [0, 3], [0.01, 0.02])  # 3 is not a multiple of the horizon
    trades = bt._trades(split, H)
    grid = _bars(np.arange(0, 40, H))
    assert np.isin(trades.timestamps, grid).all()
    assert _bars([5, 10, 15, 20, 25, 30, 35]).tolist() == (
        trades.timestamps[trades.symbol_ids == 1].tolist()
    )
    hold = _buy_and_hold(split)
    assert hold["periods"] == len(grid) == 8  # not 16 overlapping entry bars
    own = [1.01**8 - 1, 1.02**7 - 1]  # each symbol's own compounded return on the grid
    assert own[0] < hold["total_return"] < own[1]
    assert hold["total_return"] == pytest.approx(1.01 * 1.015**7 - 1)


def test_gaps_in_a_symbol_keep_it_on_the_grid() -> None:
    ts = np.concatenate([_bars(range(20)), _bars([*range(6), *range(8, 20)])])  # bars 6, 7 gone
    sym = np.array([0] * 20 + [1] * 18)
    trades = trade_samples(sym, ts, np.zeros(len(sym)), H)
    assert trades.timestamps[trades.symbol_ids == 1].tolist() == _bars([0, 5, 10, 15]).tolist()
    assert len(portfolio_returns(np.zeros(len(trades.order)), trades)) == 4


def test_the_grid_starts_at_the_first_bar_of_any_symbol() -> None:
    split = _split([0, 1], [2, 4], [0.01, -0.01])  # calendar starts at bar 2
    trades = bt._trades(split, H)
    assert trades.timestamps[trades.symbol_ids == 0].min() == _bars([2])[0]
    assert trades.timestamps[trades.symbol_ids == 1].min() == _bars([7])[0]
    assert np.isin(trades.timestamps, _bars(np.arange(2, 40, H))).all()


def test_aligned_symbols_trade_every_horizon_th_sample_as_before() -> None:
    rng = np.random.default_rng(1)
    n = 37
    ts = np.concatenate([_bars(range(n))] * 3)
    sym = np.repeat([0, 1, 2], n)
    fwd = rng.normal(0, 0.01, 3 * n)
    trades = trade_samples(sym, ts, fwd, H)
    expected = np.concatenate([np.arange(n)[::H] + s * n for s in range(3)])
    assert trades.order.tolist() == expected.tolist()
    pos = rng.integers(-1, 2, len(trades.order)).astype(np.float64)
    portfolio = portfolio_returns(strategy_returns(pos, trades, 0.001), trades)
    per_symbol = strategy_returns(pos, trades, 0.001).reshape(3, -1)
    assert portfolio == pytest.approx(per_symbol.mean(axis=0))


def test_walk_forward_rows_use_the_grid_of_their_own_bars() -> None:
    split = _split([0, 1], [0, 3], [0.01, 0.02])
    _, rows = bt.backtest(np.full(len(split), 2, np.int64), split, H, 0.0, 20, 0)
    # first 20 bars: grid 0, 5, 10, 15; symbol 1 joins at 5
    assert rows[0]["buy_and_hold_return"] == pytest.approx(1.01 * 1.015**3 - 1)
    assert rows[1]["buy_and_hold_return"] == pytest.approx(1.015**4 - 1)


def test_compare_strategies_counts_one_period_per_grid_bar() -> None:
    split = _split([0, 1, 2], [0, 1, 7], [0.0, 0.01, -0.01])
    trades = bt._trades(split, H)
    table = compare_strategies(np.full(len(split), 2, np.int64), trades, 0.0, 252 / H)
    assert all(row["periods"] == 8 for row in table.values())


def test_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError):
        trade_samples(np.zeros(3, np.int64), _bars(range(3)), np.zeros(3), 0)


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        # mean 0.1/3; downside deviation sqrt(0.01/3): sqrt(3)/3 * sqrt(252) = sqrt(84)
        ([0.1, -0.1, 0.1], math.sqrt(84)),
        # mean 0.005; downside deviation sqrt((0.01^2 + 0.02^2) / 4) = sqrt(0.000125)
        ([0.02, -0.01, 0.03, -0.02], 0.005 / math.sqrt(0.000125) * math.sqrt(252)),
    ],
)
def test_sortino_uses_the_downside_deviation_over_all_periods(
    returns: list[float], expected: float
) -> None:
    r = np.array(returns)
    out = performance(r, r, np.ones(len(r)), periods_per_year=252)
    assert out["sortino"] == pytest.approx(expected, rel=1e-12)


def test_sortino_is_zero_without_a_losing_period() -> None:
    r = np.array([0.01, 0.0, 0.02])
    assert performance(r, r, np.ones(3), periods_per_year=252)["sortino"] == 0.0
