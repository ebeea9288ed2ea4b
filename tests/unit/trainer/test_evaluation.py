import numpy as np
import pytest

from tradewind.trainer.evaluation import (
    bars_per_year,
    compare_strategies,
    performance,
    periods,
    portfolio_returns,
    strategy_returns,
    trade_samples,
)


def _days(n: int) -> np.ndarray:
    return np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[D]")


def test_trade_samples_do_not_overlap_within_a_symbol() -> None:
    ts = np.concatenate([_days(10), _days(10)])
    sym = np.array([0] * 10 + [1] * 10)
    trades = trade_samples(sym, ts, np.linspace(-0.1, 0.1, 20), horizon=5)
    assert trades.order.tolist() == [0, 5, 10, 15]
    assert trades.symbol_ids.tolist() == [0, 0, 1, 1]


def test_costs_are_charged_on_position_changes_per_symbol() -> None:
    trades = trade_samples(np.array([0, 0, 0]), _days(3), np.array([0.01, 0.02, -0.01]), horizon=1)
    returns = strategy_returns(np.array([1.0, 1.0, -1.0]), trades, cost=0.001)
    # enter long (turnover 1), hold (0), flip to short (2)
    assert returns == pytest.approx([0.01 - 0.001, 0.02, 0.01 - 0.002])


def test_performance_of_a_known_series() -> None:
    returns = np.array([0.1, -0.1, 0.1])
    out = performance(returns, returns, np.ones(3), periods_per_year=252)
    assert out["total_return"] == pytest.approx(1.1 * 0.9 * 1.1 - 1)
    assert out["max_drawdown"] == pytest.approx(0.1)
    assert out["win_rate"] == pytest.approx(2 / 3)
    assert out["sharpe"] > 0 and out["sortino"] > 0


def test_perfect_foresight_beats_buy_and_hold_and_random() -> None:
    rng = np.random.default_rng(0)
    fwd = rng.normal(0, 0.01, 500)
    trades = trade_samples(np.zeros(500, np.int64), _days(500), fwd, horizon=1)
    oracle = np.where(fwd > 0, 2, 0).astype(np.int64)  # Buy when it will rise, else Sell
    table = compare_strategies(oracle, trades, cost=0.0, periods_per_year=252)
    assert table["model"]["sharpe"] > table["buy_and_hold"]["sharpe"]
    assert table["model"]["sharpe"] > table["random"]["sharpe"]
    assert table["model"]["win_rate"] == 1.0


def test_periods_group_consecutive_bars() -> None:
    ts = np.concatenate([_days(10), _days(10)])  # two symbols, same bars
    groups = periods(ts, step=4)
    assert [len(g) for g in groups] == [8, 8, 4]
    assert sorted(np.concatenate(groups).tolist()) == list(range(20))


def test_bars_per_year_of_daily_calendar_days() -> None:
    assert bars_per_year(_days(731)) == pytest.approx(365, rel=0.01)


def test_portfolio_averages_symbols_per_bar() -> None:
    ts = np.concatenate([_days(2), _days(2)])
    trades = trade_samples(np.array([0, 0, 1, 1]), ts, np.zeros(4), horizon=1)
    out = portfolio_returns(np.array([0.02, 0.04, 0.0, -0.02]), trades)
    assert out == pytest.approx([0.01, 0.01])


def test_figures_render(tmp_path) -> None:
    from tradewind.trainer import plots

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.4},
               {"epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.45}]  # fmt: skip
    figures = [
        plots.loss_curves(history),
        plots.confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])),
        plots.equity_curves(
            {"model": np.array([0.01, -0.02]), "buy_and_hold": np.array([0.0, 0.01])}
        ),
        plots.attention_heatmap(np.full((5, 5), 0.2, dtype=np.float32)),
        plots.attention_heatmap(np.full(5, 0.2, dtype=np.float32)),
    ]
    for i, fig in enumerate(figures):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes()[:4] == b"\x89PNG"
    texts = [t.get_text() for t in figures[1].axes[0].texts]
    assert texts == ["1", "0", "0", "0", "0", "1", "0", "1", "1"]


def test_several_symbols_trade_as_one_equal_weight_portfolio() -> None:
    ts = np.concatenate([_days(4), _days(4)])
    fwd = np.array([0.01, 0.01, 0.01, 0.01, -0.01, -0.01, -0.01, -0.01])
    trades = trade_samples(np.array([0] * 4 + [1] * 4), ts, fwd, horizon=1)
    table = compare_strategies(np.full(8, 2, np.int64), trades, cost=0.0, periods_per_year=252)
    assert table["buy_and_hold"]["total_return"] == pytest.approx(0.0)  # +1% and -1% each bar
    assert table["model"]["win_rate"] == pytest.approx(0.5)
