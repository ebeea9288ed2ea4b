"""A seeded market generator: regime-switching returns with GARCH(1,1) volatility clustering.

One Markov chain of market regimes (calm, trending, volatile) drives every symbol. Each
symbol's shocks load on a common market factor, so symbols are cross-correlated, and its
variance follows GARCH(1,1) around a level set by the regime. Bars are OHLCV-consistent
(low <= open, close <= high; volume > 0). Everything is vectorised over symbols and, through
the closed form of the GARCH recursion, over blocks of bars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from tradewind.api.common import SyntheticData

REGIME_NAMES = ("calm", "trending", "volatile")
CALM, TRENDING, VOLATILE = 0, 1, 2
NO_REGIME = -1
"""Regime label of a bar whose regime is unknown (the warm-up bars of
`features.market_regimes`, which engineered features drop)."""

START = np.datetime64("2020-01-01T00:00", "ns")
BAR_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "1d": 1440}

# Per regime: mean length in bars, daily volatility, daily drift (signed per episode).
MEAN_REGIME_BARS = np.array([300.0, 200.0, 80.0])
DAILY_VOLATILITY = np.array([0.007, 0.012, 0.030])
DAILY_DRIFT = np.array([0.0, 0.004, -0.001])
VOLUME_MULTIPLIER = np.array([1.0, 1.2, 1.8])
# Where the chain goes when it leaves a regime (rows: from; columns: to).
LEAVE_PROBABILITIES = np.array([[0.0, 0.6, 0.4], [0.6, 0.0, 0.4], [0.7, 0.3, 0.0]])
GARCH_ALPHA, GARCH_BETA = 0.08, 0.90
OVERNIGHT_SHARE = (0.1, 0.5)
"""Range of the share of a bar's log return that happens before its open."""
# Each block of the closed-form GARCH recursion multiplies at most this many factors >= beta,
# so beta**-block stays far inside float64 (0.9**-2048 ~ 1e94).
_GARCH_BLOCK = 2048


@dataclass(frozen=True)
class SyntheticMarket:
    """Generated bars; price arrays are (symbol, bar), so each symbol's bars are contiguous."""

    timestamps: npt.NDArray[np.datetime64]
    symbols: tuple[str, ...]
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]
    regimes: npt.NDArray[np.int8]
    """(bar,): index into REGIME_NAMES, shared by all symbols."""

    def to_frame(self) -> pd.DataFrame:
        """The tidy bars frame (see `sources`), with a `regime` column."""
        n_symbols, n_bars = self.close.shape
        codes = np.repeat(np.arange(n_symbols, dtype=np.int32), n_bars)
        return pd.DataFrame(
            {
                "symbol": pd.Categorical.from_codes(codes, categories=list(self.symbols)),
                "timestamp": np.tile(self.timestamps, n_symbols),
                "open": self.open.ravel(),
                "high": self.high.ravel(),
                "low": self.low.ravel(),
                "close": self.close.ravel(),
                "volume": self.volume.ravel(),
                "regime": np.tile(self.regimes, n_symbols),
            },
            copy=False,  # the columns are fresh arrays; consolidating them doubles the time
        )


def generate_market(settings: SyntheticData, interval: str = "1m") -> SyntheticMarket:
    """`settings.num_symbols` x `settings.num_bars` bars spaced `interval` apart; the same
    settings give identical output. Volatility and drift scale with the bar length."""
    rng = np.random.default_rng(settings.seed)
    n_bars, n_symbols = settings.num_bars, settings.num_symbols
    day_fraction = BAR_MINUTES[interval] / 1440
    regimes, trend_signs = markov_regimes(n_bars, rng)

    loadings = rng.uniform(0.3, 0.7, n_symbols)
    volatility_scale = rng.uniform(0.7, 1.5, n_symbols)
    first_price = rng.uniform(20.0, 500.0, n_symbols)
    base_volume = np.exp(rng.uniform(np.log(1e5), np.log(1e7), n_symbols))

    market = rng.standard_normal(n_bars)
    shocks = rng.standard_normal((n_symbols, n_bars))
    shocks *= np.sqrt(1.0 - loadings**2)[:, None]
    shocks += loadings[:, None] * market

    regime_variance = DAILY_VOLATILITY**2 * day_fraction
    symbol_variance = volatility_scale**2
    variance = garch_variance(
        shocks, regime_variance[regimes], symbol_variance, GARCH_ALPHA, GARCH_BETA
    )
    sigma = np.sqrt(variance, out=variance)
    close = _close_prices(sigma, shocks, regimes, trend_signs, loadings, day_fraction)
    close *= first_price[:, None]
    high = _wick(sigma, rng)
    low = _wick(sigma, rng)
    volume = np.abs(shocks, out=shocks)
    volume += 1.0
    volume *= np.exp(0.25 * rng.standard_normal((n_symbols, n_bars), dtype=np.float32))
    volume *= base_volume[:, None] * (VOLUME_MULTIPLIER[regimes] * day_fraction)
    open_ = _opens(close, first_price, rng)
    high *= np.maximum(open_, close)
    np.divide(np.minimum(open_, close), low, out=low)
    step = np.timedelta64(BAR_MINUTES[interval], "m").astype("timedelta64[ns]")
    return SyntheticMarket(
        timestamps=START + np.arange(n_bars) * step,
        symbols=tuple(f"SYN{i:04d}" for i in range(n_symbols)),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        regimes=regimes,
    )


def _close_prices(
    sigma: npt.NDArray[np.float64],
    shocks: npt.NDArray[np.float64],
    regimes: npt.NDArray[np.int8],
    trend_signs: npt.NDArray[np.int8],
    loadings: npt.NDArray[np.float64],
    day_fraction: float,
) -> npt.NDArray[np.float64]:
    """Closes relative to the first price: exp of cumulated log returns drift - sigma^2/2 +
    sigma * shock (in place where it can be; these arrays are the bulk of the memory)."""
    log_returns = sigma * shocks
    log_returns -= 0.5 * np.square(sigma)
    drift = DAILY_DRIFT[regimes] * trend_signs * day_fraction
    log_returns += (loadings / loadings.mean())[:, None] * drift
    np.cumsum(log_returns, axis=1, out=log_returns)
    return np.exp(log_returns, out=log_returns)


def _opens(
    close: npt.NDArray[np.float64], first_price: npt.NDArray[np.float64], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Opens with an overnight move: bar t opens a random share (OVERNIGHT_SHARE) of the way,
    in log terms, from close[t-1] to close[t]. An open equal to the previous close would make
    `execution: next_open` a fill at the signal bar's own close."""
    open_ = np.empty_like(close)
    open_[:, 0] = first_price
    share = rng.uniform(*OVERNIGHT_SHARE, size=(close.shape[0], close.shape[1] - 1))
    open_[:, 1:] = close[:, :-1] * (close[:, 1:] / close[:, :-1]) ** share
    return open_


def _wick(sigma: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """exp(|N| * sigma / 2): how far the high (or low) reaches beyond open and close."""
    reach = np.abs(rng.standard_normal(sigma.shape, dtype=np.float32))
    reach *= 0.5
    wick = sigma * reach
    return np.exp(wick, out=wick)


def markov_regimes(
    n_bars: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """Regime per bar from the Markov chain, and the trend direction (+1/-1) per bar, which
    flips at random from one episode to the next."""
    chunk = int(n_bars / MEAN_REGIME_BARS.min()) + 16
    states: list[int] = []
    lengths: list[npt.NDArray[np.int64]] = []
    cumulative = np.cumsum(LEAVE_PROBABILITIES, axis=1).tolist()
    state, covered = int(rng.integers(3)), 0
    while covered < n_bars:
        length_draws = rng.random(chunk)
        chunk_states = []
        # The embedded jump chain is sequential, but it has one step per episode, not per bar.
        for draw in rng.random(chunk).tolist():
            chunk_states.append(state)
            state = next(j for j, edge in enumerate(cumulative[state]) if draw < edge)
        chunk_lengths = _geometric(length_draws, MEAN_REGIME_BARS[chunk_states])
        states.extend(chunk_states)
        lengths.append(chunk_lengths)
        covered += int(chunk_lengths.sum())
    episode_lengths = np.concatenate(lengths)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=len(states))
    regimes = np.repeat(np.array(states, dtype=np.int8), episode_lengths)[:n_bars]
    return regimes, np.repeat(signs, episode_lengths)[:n_bars]


def _geometric(
    uniforms: npt.NDArray[np.float64], means: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Geometric draws (support 1, 2, ...) with the given means, by inverting the CDF."""
    leave = 1.0 / means
    return 1 + np.floor(np.log1p(-uniforms) / np.log1p(-leave)).astype(np.int64)


def garch_variance(
    shocks: npt.NDArray[np.float64],
    bar_variance: npt.NDArray[np.float64],
    symbol_scale: npt.NDArray[np.float64],
    alpha: float,
    beta: float,
) -> npt.NDArray[np.float64]:
    """GARCH(1,1) variance, (symbol, bar): v[t] = w[t] + alpha * e[t-1]**2 + beta * v[t-1],
    where e = sqrt(v) * shocks and w[t] = (1 - alpha - beta) * bar_variance[t] * symbol_scale,
    so the variance reverts to bar_variance * symbol_scale; v[0] starts at that level.

    With a[t] = alpha * shocks[t-1]**2 + beta the recursion is linear, v[t] = a[t] v[t-1] +
    w[t], and within a block v[t] = P[t] (v[s-1] + sum_k w[k] / P[k]) with P the running
    product of a: cumulative sums instead of a Python loop over bars."""
    n_bars = shocks.shape[1]
    persistence = 1.0 - alpha - beta
    scale = symbol_scale[:, None]
    variance = np.empty_like(shocks)
    variance[:, 0] = bar_variance[0] * symbol_scale
    growth = alpha * shocks[:, :-1] ** 2 + beta
    for start in range(1, n_bars, _GARCH_BLOCK):
        stop = min(start + _GARCH_BLOCK, n_bars)
        log_product = np.cumsum(np.log(growth[:, start - 1 : stop - 1]), axis=1)
        intercept = persistence * bar_variance[start:stop] * scale
        discounted = np.cumsum(intercept * np.exp(-log_product), axis=1)
        variance[:, start:stop] = np.exp(log_product) * (
            variance[:, start - 1 : start] + discounted
        )
    return variance
