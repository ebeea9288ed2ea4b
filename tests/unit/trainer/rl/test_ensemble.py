"""RLEnsemble's learning while it trades: online re-weighting and Thompson beliefs from closed
bars only, the combined method, and exposure scaled down by the members' disagreement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.unit.trainer.rl.markets import env_spec, market_from_prices, random_market
from tradewind.api.rl import EnsembleSpec, ReweightingSpec, RLRunSpec
from tradewind.trainer.rl import Market
from tradewind.trainer.rl.ensemble import Member, Policy, RLEnsemble, performance_shares
from tradewind.trainer.rl.run import play_ensemble


def _constant(weights: list[float]) -> Policy:
    return lambda obs: np.tile(np.array(weights, dtype=np.float32), (len(obs), 1))


def _first_feature_sign(obs: np.ndarray) -> np.ndarray:
    """Long or short symbol 0 by the sign of the observation's first feature, flat on 1."""
    first = np.sign(obs[:, :1]).astype(np.float32)
    return np.concatenate([first, np.zeros_like(first)], axis=1)


def _run_spec(episode_length: int, **env: Any) -> RLRunSpec:
    environment = env_spec(episode_length=episode_length, **env)
    return RLRunSpec(
        environment=environment,
        agents=[{"name": "a", "algorithm": "ppo"}],  # type: ignore[list-item]
    )


def _trending_market(n_bars: int, seed: int = 0) -> Market:
    """Symbol 0 drifts up (with noise), symbol 1 is a random walk."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.01, (n_bars, 2)) + np.array([0.004, 0.0])
    return market_from_prices(100.0 * np.exp(np.cumsum(steps, axis=0)), seed=seed)


def test_reweighting_moves_weight_toward_the_member_that_earned_more() -> None:
    members = [Member("short", _constant([-1.0, 0.0])), Member("long", _constant([1.0, 0.0]))]
    ens = RLEnsemble(
        members, "weighted_average", discrete=False, n_symbols=2, window=20,
        reweighting=ReweightingSpec(frequency=5, adaptation_rate=0.5),
    )  # fmt: skip
    _, trace = play_ensemble(_trending_market(60), _run_spec(50), ens)
    shares = np.array(trace.shares)
    np.testing.assert_allclose(shares[0], [0.5, 0.5])
    assert shares[-1][1] > 0.9 > 0.1 > shares[-1][0]
    # the shares move only at re-weightings: after every 5th closed bar
    moves = np.flatnonzero(np.abs(np.diff(shares[:, 1])) > 0) + 1
    assert len(moves) >= 5 and all((m - 1) % 5 == 0 for m in moves)


def test_without_reweighting_the_weights_stay_static() -> None:
    members = [
        Member("short", _constant([-1.0, 0.0]), weight=3.0),
        Member("long", _constant([1.0, 0.0]), weight=1.0),
    ]
    ens = RLEnsemble(members, "weighted_average", discrete=False, n_symbols=2)
    _, trace = play_ensemble(_trending_market(60), _run_spec(50), ens)
    steps = len(trace.shares)
    assert steps > 50  # the whole market, beyond one episodeLength
    np.testing.assert_allclose(np.array(trace.shares), [[0.75, 0.25]] * steps)
    np.testing.assert_allclose(np.array(trace.weights), [[-0.5, 0.0]] * steps)


def _trace_with_prices(prices: np.ndarray, method: str) -> Any:
    market = market_from_prices(prices, seed=3)  # features do not depend on the prices
    members = [
        Member("signal", _first_feature_sign),
        Member("long", _constant([1.0, 0.5])),
        Member("short", _constant([-0.5, -1.0])),
    ]
    ens = RLEnsemble(
        members, method, discrete=False, n_symbols=2, window=10, seed=1,
        reweighting=ReweightingSpec(frequency=1, adaptation_rate=0.5), cost_rate=0.001,
    )  # fmt: skip
    return play_ensemble(market, _run_spec(40, lookback_window=3), ens)[1]


@pytest.mark.parametrize("method", ["weighted_average", "combined"])
def test_a_decision_never_depends_on_a_bar_after_the_one_it_observes(method: str) -> None:
    prices = random_market(n_bars=45, n_symbols=2, seed=5).prices
    first_bar, cut = 2, 20  # lookback 3: step j observes bar first_bar + j
    later = prices.copy()
    later[cut + 1 :] *= np.exp(np.random.default_rng(9).normal(0.0, 0.05, later[cut + 1 :].shape))
    base, moved = _trace_with_prices(prices, method), _trace_with_prices(later, method)
    seen = cut - first_bar  # the last step whose decision observes a bar <= cut
    for step in range(seen + 1):
        np.testing.assert_array_equal(base.shares[step], moved.shares[step])
        np.testing.assert_array_equal(base.weights[step], moved.weights[step])
    # the very next decision observes bar cut + 1, and it may (and here does) use it
    assert not np.array_equal(base.shares[seen + 1], moved.shares[seen + 1])


def test_observe_credits_the_targets_held_over_the_closed_bar_less_their_turnover() -> None:
    members = [Member("a", _constant([1.0])), Member("b", _constant([-0.5]))]
    ens = RLEnsemble(members, "weighted_average", discrete=False, n_symbols=1, cost_rate=0.01)
    obs = np.zeros((1, 3))
    ens.act(obs)
    ens.observe(np.array([0.02]))  # bar of the first step: the initial flat weights held it
    assert members[0].recent == [] and members[1].recent == []
    ens.act(obs)
    ens.observe(np.array([0.03]))  # held: the first act's targets, bought from flat
    assert members[0].recent == pytest.approx([0.03 - 0.01 * 1.0])
    assert members[1].recent == pytest.approx([-0.015 - 0.01 * 0.5])
    ens.act(obs)
    ens.observe(np.array([-0.01]))  # held again: no turnover
    assert members[0].recent[-1] == pytest.approx(-0.01)
    assert members[1].recent[-1] == pytest.approx(0.005)


def test_performance_shares_rank_members_by_their_t_statistic() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.01, 30)
    shares = performance_shares([noise + 0.01, noise, noise - 0.01, []])
    assert shares.sum() == pytest.approx(1.0)
    assert shares[0] > shares[1] > shares[2]
    t = [x.mean() / (x.std(ddof=1) / np.sqrt(30)) for x in (noise + 0.01, noise, noise - 0.01)]
    np.testing.assert_allclose(shares, np.exp([*t, 0.0]) / np.exp([*t, 0.0]).sum())


def test_uncertainty_scaling_shrinks_exposure_only_where_members_disagree() -> None:
    obs = np.zeros((1, 4))
    agree = [Member("a", _constant([0.8, -0.5])), Member("b", _constant([0.8, -0.5]))]
    scaled = RLEnsemble(agree, "weighted_average", False, 2, uncertainty_scaling=5.0)
    np.testing.assert_allclose(scaled.act(obs)[0], [0.8, -0.5])
    split = [Member("a", _constant([1.0, 0.5])), Member("b", _constant([0.2, 0.5]))]
    plain = RLEnsemble(split, "weighted_average", False, 2).act(obs)[0]
    shrunk = RLEnsemble(split, "weighted_average", False, 2, uncertainty_scaling=2.0).act(obs)[0]
    np.testing.assert_allclose(plain, [0.6, 0.5])
    np.testing.assert_allclose(shrunk, [0.6 / (1 + 2.0 * 0.4), 0.5], rtol=1e-6)
    assert np.abs(shrunk).sum() < np.abs(plain).sum()


def test_uncertainty_scaling_flattens_a_discrete_position_the_members_dispute() -> None:
    long_both, long_short = 2 + 2 * 3, 2 + 0 * 3  # base-3 digits: 2 long, 0 short
    members = [
        Member("a", lambda obs: np.full(len(obs), long_both)),
        Member("b", lambda obs: np.full(len(obs), long_short)),
        Member("c", lambda obs: np.full(len(obs), long_both)),
    ]
    obs = np.zeros((1, 4))
    plain = RLEnsemble(members, "majority", True, 2).act(obs)
    scaled = RLEnsemble(members, "majority", True, 2, uncertainty_scaling=2.0).act(obs)
    assert int(plain[0]) == long_both
    assert int(scaled[0]) == 2 + 1 * 3  # symbol 0 (agreed) long, symbol 1 (disputed) flat


def test_combined_blends_the_weights_with_thompson_draws() -> None:
    members = [
        Member("loser", _constant([-1.0]), weight=1.0),
        Member("winner", _constant([1.0]), weight=1.0),
        Member("muted", _constant([-1.0]), weight=0.0),
    ]
    ens = RLEnsemble(members, "combined", discrete=False, n_symbols=1, window=50, seed=0)
    for _ in range(50):
        ens.record([-0.01, 0.01, 0.01])
    actions = np.array([float(ens.act(np.zeros((1, 3)))[0, 0]) for _ in range(50)])
    assert actions.mean() > 0.8  # mostly the winner ...
    assert (np.abs(actions) < 1.0).all()  # ... but always a blend, not one member alone


def test_ensemble_spec_fields_and_rules() -> None:
    spec = EnsembleSpec.model_validate(
        {
            "method": "combined",
            "reweighting": {"frequency": 5, "adaptationRate": 0.2},
            "uncertaintyScaling": 1.5,
        }
    )
    assert spec.reweighting == ReweightingSpec(frequency=5, adaptation_rate=0.2)
    assert spec.uncertainty_scaling == 1.5
    default = EnsembleSpec()
    assert default.reweighting is None and default.uncertainty_scaling == 0.0
    with pytest.raises(ValidationError, match="reweighting needs method"):
        EnsembleSpec.model_validate({"method": "majority", "reweighting": {}})
    with pytest.raises(ValidationError):
        EnsembleSpec.model_validate({"reweighting": {"adaptationRate": 1.5}})


def test_from_spec_builds_what_the_spec_says() -> None:
    members = [Member("a", _constant([1.0])), Member("b", _constant([-1.0]))]
    spec = EnsembleSpec.model_validate(
        {"method": "combined", "performanceWindow": 7, "reweighting": {}, "uncertaintyScaling": 2}
    )
    ens = RLEnsemble.from_spec(members, spec, False, 1, seed=3, cost_rate=0.002)
    assert (ens.method, ens.window, ens.cost_rate, ens.uncertainty_scaling) == (
        "combined", 7, 0.002, 2.0,
    )  # fmt: skip
    assert ens.reweighting == ReweightingSpec()


def test_members_of_different_action_spaces_are_combined_as_target_weights() -> None:
    # a dqn member's Discrete(3**2) code next to a continuous member, in a continuous ensemble
    long_0_short_1 = 2 + 0 * 3  # base 3, symbol 0 first: long (2), short (0)
    members = [
        Member("dqn", lambda obs: np.full(len(obs), long_0_short_1), discrete=True),
        Member("sac", _constant([0.5, 0.5])),
    ]
    ens = RLEnsemble(members, "weighted_average", discrete=False, n_symbols=2)
    action = ens.act(np.zeros((1, 4), np.float32))
    assert ens.last_weights[:, 0, :].tolist() == [[1.0, -1.0], [0.5, 0.5]]
    assert np.allclose(action, [[0.75, -0.25]])


def test_the_ensemble_acts_in_its_members_space_or_continuous_when_they_differ() -> None:
    def spec(*spaces: str | None) -> RLRunSpec:
        agents = [
            {"name": f"a{i}", "algorithm": "ppo", **({"actionSpace": s} if s else {})}
            for i, s in enumerate(spaces)
        ]
        return RLRunSpec.model_validate({"agents": agents})

    assert spec(None, None).for_ensemble().environment.action_space == "discrete"
    together = spec("continuous", "continuous").for_ensemble()
    assert together.environment.action_space == "continuous"
    mixed = spec(None, "continuous")
    assert mixed.for_ensemble().environment.action_space == "continuous"
    assert mixed.for_agent(mixed.agents[0]).environment.action_space == "discrete"
    assert mixed.for_agent(mixed.agents[1]).environment.action_space == "continuous"
    assert mixed.for_agent(mixed.agents[0]) is mixed  # nothing to change
