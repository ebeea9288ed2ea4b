"""Sharpe significance on simulated returns whose true Sharpe is known: interval coverage,
autocorrelation, PSR's calibration and the deflation of the best of many noise trials."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest

from tradewind.significance import (
    SharpeStats,
    combined_probability,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_stats,
    stationary_bootstrap_indices,
    variance_inflation,
)

PER_YEAR = 252.0
FloatArray = npt.NDArray[np.float64]


def _normal(seed: int, n: int, per_period_sharpe: float) -> FloatArray:
    rng = np.random.default_rng(seed)
    return rng.normal(per_period_sharpe * 0.01, 0.01, n)


def _ar1(seed: int, n: int, phi: float) -> FloatArray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.01, n)
    out = np.empty(n)
    out[0] = noise[0]
    for i in range(1, n):
        out[i] = phi * out[i - 1] + noise[i]
    return out


def _interval_width(x: FloatArray, mean_block: float, seed: int) -> float:
    """Width of the 95% percentile interval of the per-period Sharpe ratio."""
    idx = stationary_bootstrap_indices(len(x), mean_block, 1000, np.random.default_rng(seed))
    sample = x[idx]
    sharpes = sample.mean(axis=1) / sample.std(axis=1)
    low, high = np.quantile(sharpes, [0.025, 0.975])
    return float(high - low)


def test_the_interval_covers_the_true_sharpe_about_95_percent_of_the_time() -> None:
    true = 0.06  # per period
    covered = []
    for seed in range(200):
        stats = sharpe_stats(_normal(seed, 500, true), PER_YEAR, seed=seed)
        covered.append(stats.ci_low <= true * math.sqrt(PER_YEAR) <= stats.ci_high)
    assert 0.88 <= np.mean(covered) <= 0.99


@pytest.mark.parametrize("true", [0.0, 0.1])
def test_the_interval_of_a_short_period_covers_the_true_sharpe_too(true: float) -> None:
    # 21 returns: a walk-forward period. A bootstrap percentile interval alone covers ~85%.
    covered = []
    for seed in range(300):
        stats = sharpe_stats(_normal(seed, 21, true), PER_YEAR, seed=seed)
        covered.append(stats.ci_low <= true * math.sqrt(PER_YEAR) <= stats.ci_high)
    assert 0.92 <= np.mean(covered) <= 0.99


def test_the_interval_of_autocorrelated_returns_covers_the_true_sharpe() -> None:
    # A quarter of AR(1) returns (lag-1 correlation 0.5) around a known mean: the bootstrap
    # and an analytic interval with the i.i.d. variance cover its Sharpe ~84% of the time.
    phi, mean = 0.5, 0.001
    true = mean / (0.01 / math.sqrt(1 - phi**2)) * math.sqrt(PER_YEAR)
    covered = []
    for seed in range(400):
        x = _ar1(seed, 113, phi)[50:] + mean  # the first 50 let it forget its start
        stats = sharpe_stats(x, PER_YEAR, n_boot=300, seed=seed)
        covered.append(stats.ci_low <= true <= stats.ci_high)
    assert np.mean(covered) > 0.88


def test_autocorrelated_returns_get_a_wider_interval_than_the_iid_bootstrap() -> None:
    ratios = []
    for seed in range(5):
        x = _ar1(seed, 1000, 0.6)
        ratios.append(_interval_width(x, len(x) ** (1 / 3), seed) / _interval_width(x, 1, seed))
    assert np.mean(ratios) > 1.3
    # ... and sharpe_stats uses the block bootstrap, not the i.i.d. one.
    x = _ar1(0, 1000, 0.6)
    stats = sharpe_stats(x, PER_YEAR)
    width = (stats.ci_high - stats.ci_low) / math.sqrt(PER_YEAR)
    assert width > 1.2 * _interval_width(x, 1, 0)


def test_bootstrap_indices_have_the_shape_range_and_block_lengths_asked() -> None:
    rng = np.random.default_rng(0)
    idx = stationary_bootstrap_indices(500, 10.0, 200, rng)
    assert idx.shape == (200, 500) and idx.min() >= 0 and idx.max() <= 499
    steps = np.diff(idx, axis=1)
    continued = np.mean((steps == 1) | (steps == -499))  # a block goes on (or wraps)
    assert continued == pytest.approx(0.9, abs=0.02)
    iid = stationary_bootstrap_indices(500, 1.0, 200, rng)
    assert np.mean(np.diff(iid, axis=1) == 1) < 0.01
    again = stationary_bootstrap_indices(500, 10.0, 200, np.random.default_rng(0))
    assert np.array_equal(idx, again)


def test_psr_of_zero_mean_noise_is_spread_like_a_uniform() -> None:
    psr = np.array([sharpe_stats(_normal(s, 250, 0.0), PER_YEAR, n_boot=10).psr
                    for s in range(300)])  # fmt: skip
    assert 0.4 < psr.mean() < 0.6
    assert 0.35 < np.mean(psr < 0.5) < 0.65
    assert np.mean(psr > 0.95) < 0.12


def test_psr_of_autocorrelated_zero_mean_returns_is_calibrated_too() -> None:
    # A year of AR(1) returns with no edge: with the i.i.d. variance PSR >= 0.95 comes out
    # ~17% of the time, not 5%.
    psr = np.array([sharpe_stats(_ar1(s, 252, 0.5), PER_YEAR, n_boot=10).psr for s in range(600)])
    assert np.mean(psr >= 0.95) < 0.09
    assert 0.4 < psr.mean() < 0.6


def test_variance_inflation_follows_the_autocorrelation() -> None:
    iid = [variance_inflation(_normal(s, 1000, 0.0)) for s in range(20)]
    assert min(iid) >= 1.0 and np.mean(iid) < 1.2
    persistent = [variance_inflation(_ar1(s, 1000, 0.6)) for s in range(20)]
    assert np.mean(persistent) == pytest.approx((1 + 0.6) / (1 - 0.6), rel=0.2)
    assert variance_inflation(_ar1(0, 1000, -0.5)) == 1.0  # no credit for mean reversion
    assert variance_inflation([0.01, 0.02]) == 1.0
    assert sharpe_stats(_ar1(0, 1000, 0.6), PER_YEAR).variance_inflation == pytest.approx(
        variance_inflation(_ar1(0, 1000, 0.6))
    )


def test_psr_and_dsr_fall_with_the_variance_inflation() -> None:
    plain = probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0)
    assert probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0, inflation=3.0) < plain
    best = sharpe_stats(_normal(2, 250, 0.15), PER_YEAR)
    trials = [best.sharpe, 0.5, -0.3, 0.1]
    inflated = SharpeStats(**{**best.__dict__, "variance_inflation": 3.0})
    assert deflated_sharpe_ratio(inflated, trials) < deflated_sharpe_ratio(best, trials)


def test_psrs_combined_over_independent_samples_stay_calibrated_and_gather_power() -> None:
    # No edge: three short samples' PSRs combined show an edge about as rarely as one does.
    def psr(seed: int, per_period_sharpe: float) -> float:
        return sharpe_stats(_normal(seed, 120, per_period_sharpe), PER_YEAR, n_boot=10).psr

    null = [combined_probability([psr(3 * s + k, 0.0) for k in range(3)]) for s in range(400)]
    assert 0.02 < np.mean(np.array(null) >= 0.95) < 0.09
    # A weak edge (per-period Sharpe 0.12 on 120 returns): one sample finds it about a third
    # of the time, three combined most of the time.
    single = [psr(1000 + s, 0.12) for s in range(300)]
    combined = [combined_probability([psr(2000 + 3 * s + k, 0.12) for k in range(3)])
                for s in range(100)]  # fmt: skip
    assert np.mean(np.array(single) >= 0.95) < 0.5
    assert np.mean(np.array(combined) >= 0.95) > np.mean(np.array(single) >= 0.95) + 0.2


def test_combining_one_probability_keeps_it_and_a_missing_one_is_nan() -> None:
    assert combined_probability([0.93]) == 0.93
    assert combined_probability([0.9, 0.9, 0.9]) == pytest.approx(0.9868, abs=1e-4)
    assert combined_probability([0.99, 0.01]) == pytest.approx(0.5)
    assert combined_probability([1.0, 0.5]) > 0.999  # a PSR of exactly 1 does not raise
    assert math.isnan(combined_probability([0.9, math.nan]))
    assert math.isnan(combined_probability([]))


def test_psr_of_a_strong_strategy_is_near_one() -> None:
    stats = sharpe_stats(_normal(1, 1000, 0.2), PER_YEAR)
    assert stats.psr > 0.99
    assert stats.ci_low > 0


def test_psr_falls_with_fat_tails_and_negative_skew_for_the_same_sharpe() -> None:
    normal = probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0)
    assert probabilistic_sharpe_ratio(0.1, 250, 0.0, 10.0) < normal
    assert probabilistic_sharpe_ratio(0.1, 250, -1.0, 3.0) < normal
    assert probabilistic_sharpe_ratio(0.1, 250, -1.0, 10.0) < probabilistic_sharpe_ratio(
        0.1, 250, -1.0, 3.0
    )
    assert probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0, benchmark=0.1) == pytest.approx(0.5)
    assert probabilistic_sharpe_ratio(0.1, 1, 0.0, 3.0) == 0.5


def test_expected_max_sharpe_grows_with_the_trials() -> None:
    assert expected_max_sharpe(1, 0.01) == 0.0
    assert expected_max_sharpe(10, 0.0) == 0.0
    values = [expected_max_sharpe(n, 0.01) for n in (2, 5, 10, 100, 1000)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert expected_max_sharpe(100, 0.04) == pytest.approx(2 * values[3])


def _best_of(strategies: list[FloatArray]) -> tuple[SharpeStats, list[float]]:
    stats = [sharpe_stats(x, PER_YEAR, n_boot=10) for x in strategies]
    return max(stats, key=lambda s: s.sharpe), [s.sharpe for s in stats]


def test_the_best_of_many_noise_trials_looks_significant_until_deflated() -> None:
    psr, dsr = [], []
    for rep in range(30):
        best, sharpes = _best_of([_normal(1000 * rep + i, 250, 0.0) for i in range(50)])
        psr.append(best.psr)
        dsr.append(deflated_sharpe_ratio(best, sharpes))
    assert np.mean(np.array(psr) > 0.9) > 0.8
    assert np.median(dsr) < 0.95 and np.mean(np.array(dsr) > 0.95) < 0.2
    assert all(d < p for d, p in zip(dsr, psr, strict=True))


def test_a_genuinely_strong_strategy_survives_deflation() -> None:
    noise = [_normal(i, 1000, 0.0) for i in range(49)]
    best, sharpes = _best_of([_normal(99, 1000, 0.2), *noise])
    assert best.sharpe > 2.0
    assert deflated_sharpe_ratio(best, sharpes) > 0.95


def test_one_trial_is_not_deflated_and_unknown_spread_is_a_skill_less_estimates() -> None:
    stats = sharpe_stats(_normal(3, 500, 0.05), PER_YEAR)
    assert deflated_sharpe_ratio(stats, [stats.sharpe]) == pytest.approx(stats.psr)
    few = deflated_sharpe_ratio(stats, [stats.sharpe], n_trials=20)
    assert few < stats.psr
    assert deflated_sharpe_ratio(stats, [stats.sharpe, float("nan")], n_trials=20) == few


@pytest.mark.parametrize(
    "returns",
    [[], [0.01], np.zeros(300), np.full(300, 0.001), [float("nan")] * 5],
    ids=["empty", "one", "never-trades", "constant", "nan"],
)
def test_a_flat_or_empty_strategy_is_sharpe_zero_with_psr_one_half(returns: list[float]) -> None:
    stats = sharpe_stats(returns, PER_YEAR)
    assert (stats.sharpe, stats.ci_low, stats.ci_high, stats.psr) == (0.0, 0.0, 0.0, 0.5)
    assert (stats.skew, stats.kurtosis) == (0.0, 3.0)
    assert deflated_sharpe_ratio(stats, [0.0, 0.0, 0.0]) == 0.5


def test_non_finite_returns_are_dropped() -> None:
    x = _normal(5, 300, 0.05)
    with_nan = np.concatenate([x[:100], [np.nan, np.inf], x[100:]])
    a, b = sharpe_stats(x, PER_YEAR), sharpe_stats(with_nan, PER_YEAR)
    assert b.periods == 300 and a.sharpe == pytest.approx(b.sharpe)


def test_results_are_deterministic_for_a_seed_and_moments_are_not_excess() -> None:
    x = _normal(7, 400, 0.05)
    assert sharpe_stats(x, PER_YEAR, seed=1) == sharpe_stats(x, PER_YEAR, seed=1)
    assert sharpe_stats(x, PER_YEAR, seed=1).ci_low != sharpe_stats(x, PER_YEAR, seed=2).ci_low
    stats = sharpe_stats(x, PER_YEAR)
    assert stats.sharpe == pytest.approx(x.mean() / x.std() * math.sqrt(PER_YEAR))
    assert stats.kurtosis == pytest.approx(3.0, abs=0.6) and abs(stats.skew) < 0.4
    assert stats.ci_low < stats.sharpe < stats.ci_high


def test_metrics_round_trip_with_a_prefix() -> None:
    stats = sharpe_stats(_normal(8, 300, 0.05), PER_YEAR)
    metrics = stats.as_metrics("backtest")
    assert set(metrics) == {
        "backtest_sharpe", "backtest_sharpe_ci_low", "backtest_sharpe_ci_high", "backtest_psr",
        "backtest_periods", "backtest_periods_per_year", "backtest_skew", "backtest_kurtosis",
        "backtest_sharpe_variance_inflation",
    }  # fmt: skip
    assert set(stats.as_metrics()) == {k.removeprefix("backtest_") for k in metrics}
    assert SharpeStats.from_metrics(metrics, "backtest") == stats
    # a run logged before the inflation was: read as independent returns
    older = {k: v for k, v in metrics.items() if not k.endswith("variance_inflation")}
    assert SharpeStats.from_metrics(older, "backtest").variance_inflation == 1.0  # type: ignore[union-attr]
    del metrics["backtest_skew"]
    assert SharpeStats.from_metrics(metrics, "backtest") is None


@pytest.mark.parametrize("kwargs", [{"periods_per_year": 0.0}, {"confidence": 1.0}, {"n_boot": 0}])
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"periods_per_year": PER_YEAR} | kwargs
    per_year = args.pop("periods_per_year")
    with pytest.raises(ValueError):
        sharpe_stats([0.01, -0.01, 0.02], per_year, **args)  # type: ignore[arg-type]
