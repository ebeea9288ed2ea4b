"""How far to believe a Sharpe ratio: its confidence interval, its Probabilistic Sharpe Ratio
and, for the best of many trials, its Deflated Sharpe Ratio.

    stats = sharpe_stats(returns, periods_per_year=252)   # Sharpe, 95% interval, PSR vs 0
    stats.as_metrics("backtest")                          # backtest_sharpe, ..._ci_low, ...
    deflated_sharpe_ratio(best, [t.sharpe for t in trials])   # P(skill) after the search

Conventions, chosen once for every caller:

- The Sharpe ratio is mean / std of the per-period returns with the population std
  (ddof=0, as `trainer.evaluation.performance` computes it), times sqrt(periods_per_year).
  It is 0.0 when the std is 0 or there are fewer than 2 returns.
- Non-finite returns (NaN, inf) are dropped before anything is computed; `periods` counts the
  returns kept.
- The interval spans two: the percentile interval of the Sharpe ratios of
  stationary-bootstrap resamples (Politis & Romano 1994), whose random block lengths keep
  the returns' autocorrelation (mean block length n ** (1/3), the rate that minimises the
  variance estimate's error for weakly dependent series), and the analytic interval of the
  estimate's asymptotic variance under skew and kurtosis (Mertens 2002, the one PSR uses)
  with Student-t quantiles. The bootstrap alone under-covers short samples: of 21 i.i.d.
  returns (a walk-forward period) its 95% interval misses the true Sharpe ~15% of the time,
  the analytic one ~5%; the analytic one alone ignores autocorrelation.
- PSR is Bailey & López de Prado (2012): P(true Sharpe > benchmark) given the sample's
  length, skew and (non-excess) kurtosis, on per-period Sharpe ratios, with the estimate's
  variance scaled by the returns' autocorrelation (`variance_inflation`, below).
- Autocorrelated returns carry less information than as many independent ones: the Sharpe
  estimate's variance grows by the ratio of the long-run variance to the variance (Lo 2002).
  `variance_inflation` is the larger of two estimates of that ratio, and at least 1: the
  Newey-West (Bartlett) one with n ** (1/3) lags, and the AR(1) one (1 + r1) / (1 - r1)
  (r1 the lag-1 autocorrelation, capped at 0.9), because Newey-West with few lags misses
  most of a persistent series'.
  Measured on zero-mean AR(1) returns with φ 0.5 (252 returns, 4000 seeds), PSR >= 0.95
  came out 17% of the time with the i.i.d. variance, 7% with Newey-West alone and 5% with
  the larger of the two; on i.i.d. returns 5% either way. Negative autocorrelation is not
  credited (the floor of 1).
- DSR is Bailey & López de Prado (2014): the PSR of the best trial against the Sharpe ratio
  the best of `n_trials` skill-less trials would show by luck.
- Independent samples of one strategy (a placebo market under several seeds) are judged
  together by Stouffer's combination of their PSRs or DSRs (`combined_probability`).
- A flat strategy (constant returns, e.g. a model that never trades) gets sharpe 0,
  interval [0, 0], psr 0.5, skew 0 and kurtosis 3 (a normal's): nothing raises.

numpy and the standard library only (`statistics.NormalDist` for the normal's CDF and
quantiles): the operator, which has no torch and no scipy, imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

EULER_MASCHERONI = 0.5772156649015329
_NORMAL = NormalDist()
_BOOT_CELLS = 4_000_000
"""Resampled returns held at once (rows of the bootstrap are drawn in chunks of this size)."""
METRIC_KEYS = (
    "sharpe",
    "sharpe_ci_low",
    "sharpe_ci_high",
    "psr",
    "periods",
    "periods_per_year",
    "skew",
    "kurtosis",
    "sharpe_variance_inflation",
)
"""The metrics of a SharpeStats (`as_metrics`), in its fields' order."""
_AR1_CAP = 0.9
"""Largest lag-1 autocorrelation the AR(1) variance inflation uses (19x at 0.9)."""


@dataclass(frozen=True)
class SharpeStats:
    """A Sharpe ratio with what it takes to judge it. Ratios are annualised."""

    sharpe: float
    """mean / std (ddof=0) * sqrt(periods_per_year); 0.0 when std is 0 or periods < 2."""
    ci_low: float
    """Lower bound of the confidence interval (stationary bootstrap and analytic, the wider)."""
    ci_high: float
    """Upper bound of the confidence interval."""
    psr: float
    """Probabilistic Sharpe Ratio against 0: P(true Sharpe > 0); 0.5 when undefined."""
    periods: int
    """Number of (finite) returns."""
    periods_per_year: float
    """Returns per year (the annualisation factor's square)."""
    skew: float
    """Skewness of the returns (0 when undefined)."""
    kurtosis: float
    """Kurtosis of the returns, not excess: a normal's is 3 (3 when undefined)."""
    variance_inflation: float = 1.0
    """How many times the Sharpe estimate's variance exceeds that of as many independent
    returns, from their autocorrelation (>= 1; the module says how it is estimated)."""

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """The fields as flat metrics (`sharpe`, `sharpe_ci_low`, `sharpe_ci_high`, `psr`,
        `periods`, `periods_per_year`, `skew`, `kurtosis`, `sharpe_variance_inflation`), named
        `<prefix>_<key>` with a prefix: what the trainers log to MLflow."""
        values = (self.sharpe, self.ci_low, self.ci_high, self.psr, self.periods,
                  self.periods_per_year, self.skew, self.kurtosis,
                  self.variance_inflation)  # fmt: skip
        head = f"{prefix}_" if prefix else ""
        return {f"{head}{key}": float(v) for key, v in zip(METRIC_KEYS, values, strict=True)}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], prefix: str = "") -> SharpeStats | None:
        """The inverse of `as_metrics`; None unless every key is there and finite (a run that
        did not log them, or an older trainer). A run logged before `variance_inflation` was
        gets 1.0 (its PSR was computed without it)."""
        head = f"{prefix}_" if prefix else ""
        optional = {f"{head}sharpe_variance_inflation": 1.0}
        values = [metrics.get(f"{head}{key}", optional.get(f"{head}{key}")) for key in METRIC_KEYS]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            return None
        sharpe, low, high, psr, periods, per_year, skew, kurtosis, inflation = (
            float(v or 0) for v in values
        )
        if periods < 0 or per_year <= 0 or inflation < 1:
            return None
        return cls(sharpe, low, high, psr, int(periods), per_year, skew, kurtosis, inflation)


def sharpe_stats(
    returns: npt.ArrayLike,
    periods_per_year: float,
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> SharpeStats:
    """The annualised Sharpe ratio of per-period `returns` with its `confidence` interval
    (stationary bootstrap, `n_boot` resamples, deterministic for a `seed`), its PSR against 0,
    skew and kurtosis. Non-finite returns are dropped; see the module for degenerate cases."""
    _check_args(periods_per_year, confidence, n_boot)
    x = np.asarray(returns, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if not _has_spread(x):
        return SharpeStats(0.0, 0.0, 0.0, 0.5, n, float(periods_per_year), 0.0, 3.0)
    skew, kurtosis = _moments(x)
    inflation = variance_inflation(x)
    per_period = float(x.mean() / x.std())
    scale = math.sqrt(periods_per_year)
    rng = np.random.default_rng(seed)
    boot = _bootstrap_sharpes(x, n ** (1 / 3), n_boot, rng)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    error = _sharpe_std_error(per_period, n, skew, kurtosis, inflation)
    half = _student_t_quantile(1.0 - tail, n - 1) * error
    low, high = min(float(low), per_period - half), max(float(high), per_period + half)
    return SharpeStats(
        sharpe=per_period * scale,
        ci_low=float(low) * scale,
        ci_high=float(high) * scale,
        psr=probabilistic_sharpe_ratio(per_period, n, skew, kurtosis, inflation=inflation),
        periods=n,
        periods_per_year=float(periods_per_year),
        skew=skew,
        kurtosis=kurtosis,
        variance_inflation=inflation,
    )


def variance_inflation(returns: npt.ArrayLike) -> float:
    """How many times the variance of a Sharpe (or mean) estimate of these returns exceeds
    that of as many independent ones: max(1, Newey-West, AR(1)) estimates of the long-run
    variance over the variance (the module says why both). 1.0 for fewer than 3 finite
    returns or no spread."""
    x = np.asarray(returns, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 3 or not _has_spread(x):
        return 1.0
    d = x - x.mean()
    variance = float(np.dot(d, d))
    lags = min(math.ceil(n ** (1 / 3)), n - 1)
    rho = np.array([float(np.dot(d[k:], d[:-k])) / variance for k in range(1, lags + 1)])
    weights = 1.0 - np.arange(1, lags + 1) / (lags + 1)
    newey_west = 1.0 + 2.0 * float(np.dot(weights, rho))
    rho1 = min(float(rho[0]), _AR1_CAP)
    return max(1.0, newey_west, (1.0 + rho1) / (1.0 - rho1))


def stationary_bootstrap_indices(
    n: int, mean_block: float, n_boot: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """`n_boot` stationary-bootstrap resamples of positions 0..n-1, shape (n_boot, n): blocks
    start at uniform positions, have geometric lengths of mean `mean_block` (a new block
    starts at each position with probability 1/mean_block) and wrap around the end. With
    mean_block 1 it is the i.i.d. bootstrap."""
    if n <= 0 or n_boot <= 0:
        return np.zeros((max(n_boot, 0), max(n, 0)), dtype=np.int64)
    p_new = 1.0 / max(float(mean_block), 1.0)
    new_block = rng.random((n_boot, n)) < p_new
    new_block[:, 0] = True  # no block runs from one resample into the next
    block = np.cumsum(new_block.ravel()).reshape(n_boot, n) - 1
    block_start = np.flatnonzero(new_block) % n
    shift = rng.integers(0, n, size=len(block_start)) - block_start
    index = shift[block]
    index += np.arange(n)
    index[index >= n] -= n  # wrap around: a block starting at n-2 goes n-2, n-1, 0, ...
    return np.asarray(index, dtype=np.int64)


def probabilistic_sharpe_ratio(
    sharpe: float,
    periods: int,
    skew: float,
    kurtosis: float,
    benchmark: float = 0.0,
    *,
    inflation: float = 1.0,
) -> float:
    """P(true Sharpe > `benchmark`) for a per-period (not annualised) Sharpe estimated on
    `periods` returns with this skew and (non-excess) kurtosis (Bailey & López de Prado
    2012): Φ((SR - SR*) √(T-1) / √(inflation · (1 - skew·SR + (kurtosis-1)/4 · SR²))), with
    `inflation` the returns' `variance_inflation` (1 for independent returns). 0.5 with fewer
    than 2 periods or non-finite inputs."""
    values = (sharpe, skew, kurtosis, benchmark, inflation)
    if periods < 2 or not all(math.isfinite(v) for v in values):
        return 0.5
    error = _sharpe_std_error(sharpe, periods, skew, kurtosis, inflation)
    return _NORMAL.cdf((sharpe - benchmark) / error)


def _sharpe_std_error(
    sharpe: float, periods: int, skew: float, kurtosis: float, inflation: float = 1.0
) -> float:
    """Standard error of a per-period Sharpe estimate of `periods` returns (Mertens 2002),
    scaled for autocorrelation: √(inflation · (1 - skew·SR + (kurtosis-1)/4 · SR²) / (T-1))."""
    variance = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return math.sqrt(max(inflation, 1.0) * max(variance, 1e-12) / (periods - 1))


def _student_t_quantile(p: float, df: int) -> float:
    """Student's t quantile by the Cornish-Fisher expansion in 1/df (Abramowitz & Stegun
    26.7.5; no scipy here): at p = 0.975 within 0.1% of the exact value for df >= 3 (11.3
    instead of 12.7 at df 1); the normal's for df < 1."""
    z = _NORMAL.inv_cdf(p)
    if df < 1:
        return z
    g = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + float(sum(term / df ** (k + 1) for k, term in enumerate(g)))


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """The expected largest of `n_trials` per-period Sharpe estimates of skill-less
    strategies whose estimates vary with `sharpe_variance` (Bailey & López de Prado 2014):
    √V · ((1-g) Φ⁻¹(1 - 1/N) + g Φ⁻¹(1 - 1/(N e))), g the Euler-Mascheroni constant.
    0 for one trial or fewer, or a variance that is not positive."""
    if n_trials <= 1 or not sharpe_variance > 0 or not math.isfinite(sharpe_variance):
        return 0.0
    g = EULER_MASCHERONI
    spread = (1.0 - g) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials) + g * _NORMAL.inv_cdf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return math.sqrt(sharpe_variance) * spread


def deflated_sharpe_ratio(
    best: SharpeStats, trial_sharpes: Sequence[float], n_trials: int | None = None
) -> float:
    """The PSR of `best` against the Sharpe ratio the best of `n_trials` (default: as many
    as `trial_sharpes`) skill-less trials would reach by luck: the probability that its
    skill is real once the search is accounted for. `trial_sharpes` are the annualised
    Sharpe ratios of the trials that produced one (the best's included), converted to per
    period with best.periods_per_year; their sample variance (ddof=1) is the spread. With
    fewer than two finite ones the spread is a skill-less estimate's own, 1/(periods-1)."""
    scale = math.sqrt(best.periods_per_year) if best.periods_per_year > 0 else 1.0
    per_period = np.array([s for s in trial_sharpes if math.isfinite(s)], dtype=np.float64)
    per_period /= scale
    trials = len(trial_sharpes) if n_trials is None else n_trials
    if len(per_period) >= 2:
        variance = float(per_period.var(ddof=1))
    else:
        variance = 1.0 / max(best.periods - 1, 1)
    threshold = expected_max_sharpe(trials, variance)
    return probabilistic_sharpe_ratio(
        best.sharpe / scale,
        best.periods,
        best.skew,
        best.kurtosis,
        benchmark=threshold,
        inflation=best.variance_inflation,
    )


def combined_probability(probabilities: Sequence[float]) -> float:
    """Stouffer's combination of one-sided probabilities P(true Sharpe > benchmark) (PSR, DSR)
    of one strategy on independent samples: Φ(Σ Φ⁻¹(pᵢ) / √k). With no edge each pᵢ is Φ of a
    standard normal, so the combination is calibrated as each one is (>= 0.95 one time in
    twenty), while the samples' evidence adds up: three samples at 0.9 each give 0.987, and
    one at 0.99 with one at 0.2 gives 0.85. One probability is returned as it is; NaN when
    any is NaN or there are none."""
    values = [float(p) for p in probabilities]
    if not values or any(math.isnan(p) for p in values):
        return math.nan
    if len(values) == 1:
        return values[0]
    tiny = 1e-15
    z = sum(_NORMAL.inv_cdf(min(max(p, tiny), 1.0 - tiny)) for p in values)
    return _NORMAL.cdf(z / math.sqrt(len(values)))


def _check_args(periods_per_year: float, confidence: float, n_boot: int) -> None:
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be positive, not {periods_per_year}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, not {n_boot}")


def _has_spread(x: npt.NDArray[np.float64]) -> bool:
    """At least 2 returns that are not all equal (up to rounding: a constant's computed std
    can be a few ulps above 0)."""
    if len(x) < 2:
        return False
    std = float(x.std())
    return std > 0 and std > 1e-12 * float(np.max(np.abs(x)))


def _moments(x: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Skew and (non-excess) kurtosis with population moments, of returns with a spread."""
    d = x - x.mean()
    m2 = float(np.mean(d**2))
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2


def _bootstrap_sharpes(
    x: npt.NDArray[np.float64], mean_block: float, n_boot: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Per-period Sharpe ratios of `n_boot` stationary-bootstrap resamples of `x` (0 for a
    resample with no spread), drawn in chunks to bound memory."""
    n = len(x)
    centre = float(x.mean())
    centred = x - centre  # moments of centred values: no cancellation in E[c²] - E[c]²
    rows = max(1, _BOOT_CELLS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for lo in range(0, n_boot, rows):
        sample = centred[stationary_bootstrap_indices(n, mean_block, min(rows, n_boot - lo), rng)]
        mean = sample.mean(axis=1)
        variance = np.einsum("ij,ij->i", sample, sample) / n - mean**2
        std = np.sqrt(np.maximum(variance, 0.0))
        spread = std > 1e-12 * float(np.max(np.abs(x)))
        out[lo : lo + len(mean)] = np.divide(
            mean + centre, std, out=np.zeros_like(mean), where=spread
        )
    return out
