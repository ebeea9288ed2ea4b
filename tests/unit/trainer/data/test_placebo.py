"""The placebo markets have the answers they claim, before any model sees them."""

import numpy as np
import pandas as pd
import pytest

from tradewind.api.common import SyntheticData
from tradewind.significance import sharpe_stats
from tradewind.trainer.data.placebo import PLACEBO_KINDS, PlaceboKind, placebo_bars
from tradewind.trainer.data.synthetic import generate_market
from tradewind.trainer.execution import trade_returns


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    market = generate_market(SyntheticData(num_symbols=2, num_bars=3000, seed=4), interval="1d")
    return market.to_frame().drop(columns=["regime"])


def _psr_of_rule(bars: pd.DataFrame, rule: str, fill: str) -> float:
    """PSR of a one-bar strategy on every symbol: `reversal` bets against the last
    close-to-close move, `momentum` with the last 10; filled at `fill`."""
    returns = []
    for _, b in bars.groupby("symbol", observed=True):
        close = b["close"].to_numpy()
        last = np.diff(np.log(close), prepend=np.nan)
        signal = (
            -np.sign(last) if rule == "reversal" else np.sign(pd.Series(last).rolling(10).sum())
        )
        if fill == "same_bar_close":
            earned = np.r_[close[1:] / close[:-1] - 1, np.nan]
        else:
            earned = trade_returns(b[fill].to_numpy(), 1)
        returns.append(np.asarray(signal) * earned)
    flat = np.concatenate(returns)
    return sharpe_stats(flat[np.isfinite(flat)], 252).psr


def test_markets_keep_the_reference_shape_and_volatility(reference: pd.DataFrame) -> None:
    for kind in PLACEBO_KINDS:
        bars = placebo_bars(reference, kind, seed=1)
        assert len(bars) == len(reference)
        assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
        assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
        for symbol, b in bars.groupby("symbol", observed=True):
            ref = reference[reference["symbol"] == symbol]
            np.testing.assert_array_equal(b["timestamp"].to_numpy(), ref["timestamp"].to_numpy())
            vol, ref_vol = (np.std(np.diff(np.log(x["close"]))) for x in (b, ref))
            assert vol == pytest.approx(ref_vol, rel=0.15)


def test_reversal_pays_only_at_the_signal_bar_itself(reference: pd.DataFrame) -> None:
    bars = placebo_bars(reference, "reversal", seed=1)
    assert _psr_of_rule(bars, "reversal", "same_bar_close") > 0.999
    for fill in ("open", "close"):  # next_open, next_close
        assert _psr_of_rule(bars, "reversal", fill) < 0.95


@pytest.mark.parametrize("kind", ["random_walk", "planted_edge"])
def test_the_planted_edge_is_tradable_at_the_next_bar_and_the_walk_is_not(
    reference: pd.DataFrame, kind: PlaceboKind
) -> None:
    bars = placebo_bars(reference, kind, seed=1)
    for fill in ("open", "close"):
        psr = _psr_of_rule(bars, "momentum", fill)
        assert (psr > 0.999) if kind == "planted_edge" else (psr < 0.95)


def test_same_seed_same_market(reference: pd.DataFrame) -> None:
    a, b = (placebo_bars(reference, "planted_edge", seed=3) for _ in range(2))
    pd.testing.assert_frame_equal(a, b)
    assert not placebo_bars(reference, "planted_edge", seed=4)["close"].equals(a["close"])
