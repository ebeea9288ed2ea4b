import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.unit.trainer.rl.markets import env_spec, market_from_prices, random_market
from tradewind.trainer.data import DataError
from tradewind.trainer.rl import TradingEnvironment, discrete_targets

REWARDS = ("returns", "log_returns", "sharpe", "sortino", "differential_sharpe")


def _run(env: TradingEnvironment, actions: list[Any]) -> list[tuple[Any, ...]]:
    """reset, then one step per action: [(obs, None, ...), (obs, reward, term, trunc, info)...]"""
    observation, info = env.reset()
    out: list[tuple[Any, ...]] = [(observation, None, False, False, info)]
    for action in actions:
        out.append(env.step(np.asarray(action, dtype=np.float32)))
    return out


# --- the checkers ---------------------------------------------------------------------------


@pytest.mark.parametrize("action_space", ["discrete", "continuous"])
@pytest.mark.parametrize("reward", REWARDS)
def test_gymnasium_and_sb3_env_checkers_pass(action_space: str, reward: str) -> None:
    spec = env_spec(action_space=action_space, reward=reward, random_start=True, reward_window=3)
    with warnings.catch_warnings():
        # Infinite observation bounds (normalised features are unbounded) and no render
        # modes are reported as warnings, not failures.
        warnings.simplefilter("ignore", UserWarning)
        gymnasium_check_env(TradingEnvironment(random_market(), spec, seed=0))
        sb3_check_env(TradingEnvironment(random_market(), spec, seed=0))


# --- timing: no look-ahead -------------------------------------------------------------------


def test_the_action_chosen_at_bar_t_fills_at_t_plus_1_and_earns_from_there() -> None:
    # Bar 2 -> 3 jumps 10 %: an agent going long after observing bar 2 fills at bar 3's
    # close and does not get that jump; it gets bar 3 -> 4 (+10 %) in the next step.
    market = market_from_prices([100.0, 100.0, 100.0, 110.0, 121.0, 121.0, 121.0, 121.0])
    env = TradingEnvironment(market, env_spec())
    _, info = env.reset()
    assert env.bar == 2 and info["positions"] == (0.0,)
    _, reward, *_ = env.step(np.array([1.0], np.float32))
    assert env.bar == 3
    assert reward == 0.0  # flat through bar 2 -> 3
    _, reward, *_ = env.step(np.array([1.0], np.float32))
    assert reward == pytest.approx(0.1, abs=1e-12)  # long through bar 3 -> 4


def test_the_observation_holds_the_window_up_to_bar_t_and_the_weights() -> None:
    market = random_market(n_bars=20, n_symbols=2)
    env = TradingEnvironment(market, env_spec(lookback_window=4))
    observation, _ = env.reset()
    assert env.bar == 3
    np.testing.assert_array_equal(observation[:-2], market.features[0:4].reshape(-1))
    np.testing.assert_array_equal(observation[-2:], [0.0, 0.0])
    observation, *_ = env.step(np.array([0.5, -0.25], np.float32))
    np.testing.assert_array_equal(observation[:-2], market.features[1:5].reshape(-1))
    np.testing.assert_array_equal(observation[-2:], [0.5, -0.25])


@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("bar", [3, 5, 8])
def test_data_after_t_plus_1_changes_neither_observation_at_t_nor_reward_of_step_t(
    reward: str, bar: int
) -> None:
    spec = env_spec(reward=reward, episode_length=10, transaction_cost=0.001, reward_window=3)
    market = random_market(n_bars=14, n_symbols=2, seed=3)
    prices, features = market.prices.copy(), market.features.copy()
    prices[bar + 2 :] *= np.exp(np.random.default_rng(1).normal(0, 0.2, prices[bar + 2 :].shape))
    features[bar + 1 :] += 5.0
    changed = dataclasses.replace(market, prices=prices, features=features)
    actions = np.random.default_rng(2).uniform(-1, 1, (10, 2))
    original = _run(TradingEnvironment(market, spec), list(actions))
    perturbed = _run(TradingEnvironment(changed, spec), list(actions))
    step_at_bar = bar - 2  # the reset observes bar 2 (lookback 3); step k observes bar 2 + k
    for before, after in zip(
        original[: step_at_bar + 1], perturbed[: step_at_bar + 1], strict=True
    ):
        np.testing.assert_array_equal(before[0], after[0])  # observations at bars <= t
    for before, after in zip(
        original[1 : step_at_bar + 2], perturbed[1 : step_at_bar + 2], strict=True
    ):
        assert before[1] == after[1]  # rewards of the steps taken at bars <= t
        assert before[4]["portfolio_value"] == after[4]["portfolio_value"]
    # ... and the perturbation is visible one bar later (the test can fail).
    assert not np.array_equal(original[step_at_bar + 1][0], perturbed[step_at_bar + 1][0])
    assert (
        original[step_at_bar + 2][4]["portfolio_value"]
        != perturbed[step_at_bar + 2][4]["portfolio_value"]
    )


# --- accounting ------------------------------------------------------------------------------


def _reference_values(
    prices: np.ndarray, targets: list[list[float]], balance: float, rate: float
) -> list[tuple[float, float]]:
    """(equity, costs) after each step, from shares and cash: the documented convention
    (costs = rate x traded value at the pre-trade equity; targets of the post-cost equity)."""
    shares, cash, out = np.zeros(prices.shape[1]), balance, []
    for step, target in enumerate(targets):
        close = prices[step + 1]
        holdings = shares * close
        equity = cash + holdings.sum()
        costs = rate * np.abs(np.asarray(target) * equity - holdings).sum()
        equity -= costs
        shares = np.asarray(target) * equity / close
        cash = equity - (shares * close).sum()
        out.append((equity, costs))
    return out


def test_costs_and_slippage_reduce_equity_as_documented_on_two_symbols() -> None:
    prices = np.array([[100, 50], [100, 50], [100, 50], [100, 50], [110, 40], [121, 40]], float)
    spec = env_spec(transaction_cost=0.001, slippage=0.002, episode_length=3)
    env = TradingEnvironment(market_from_prices(prices), spec)
    env.reset()
    _, reward, _, _, info = env.step(np.array([0.5, -0.25], np.float32))
    # Flat through bar 2 -> 3, then buy 50 % and short 25 % at bar 3: 0.3 % of 750.
    assert info["costs"] == pytest.approx(2.25)
    assert info["turnover"] == pytest.approx(0.75)
    assert info["portfolio_value"] == pytest.approx(997.75)
    assert reward == pytest.approx(-0.00225)
    assert info["positions"] == (0.5, -0.25)
    # Bar 3 -> 4: +10 % and -20 %: 997.75 x 1.1; then close both (748.3125 traded).
    _, reward, _, _, info = env.step(np.array([0.0, 0.0], np.float32))
    assert info["costs"] == pytest.approx(0.003 * 748.3125)
    assert info["portfolio_value"] == pytest.approx(997.75 * 1.1 - 0.003 * 748.3125)
    assert info["turnover"] == pytest.approx(0.5 + 0.25 * 0.8 / 1.1)
    assert reward == pytest.approx(info["portfolio_value"] / 997.75 - 1)


def test_equity_matches_a_shares_and_cash_simulation() -> None:
    market = random_market(n_bars=30, n_symbols=3, volatility=0.03, seed=5)
    spec = env_spec(transaction_cost=0.002, slippage=0.001, episode_length=20)
    targets = np.random.default_rng(4).uniform(-1, 1, (20, 3)).astype(np.float32)
    steps = _run(TradingEnvironment(market, spec), list(targets))[1:]
    expected = _reference_values(market.prices[2:], targets.astype(float).tolist(), 1000.0, 0.003)
    for (_, _, _, _, info), (equity, costs) in zip(steps, expected, strict=True):
        assert info["portfolio_value"] == pytest.approx(equity, rel=1e-12)
        assert info["costs"] == pytest.approx(costs, rel=1e-12)


def test_slippage_and_transaction_cost_are_charged_alike() -> None:
    market = random_market(n_bars=20, n_symbols=2)
    actions = list(np.random.default_rng(0).uniform(-1, 1, (5, 2)))
    commission = _run(TradingEnvironment(market, env_spec(transaction_cost=0.003)), actions)
    slippage = _run(TradingEnvironment(market, env_spec(slippage=0.003)), actions)
    free = _run(TradingEnvironment(market, env_spec()), actions)
    assert [s[4]["portfolio_value"] for s in commission] == [
        s[4]["portfolio_value"] for s in slippage
    ]
    assert commission[-1][4]["portfolio_value"] < free[-1][4]["portfolio_value"]
    assert all(s[4]["costs"] == 0.0 for s in free)


def test_bankruptcy_terminates_with_zero_equity() -> None:
    market = market_from_prices([100.0, 100.0, 100.0, 100.0, 80.0, 80.0, 80.0, 80.0])
    env = TradingEnvironment(market, env_spec(max_position_size=10.0))
    env.reset()
    env.step(np.array([1.0], np.float32))  # 10x long, filled at bar 3
    _, reward, terminated, truncated, info = env.step(np.array([1.0], np.float32))
    assert (terminated, truncated) == (True, False)
    assert reward == -1.0
    assert info["portfolio_value"] == 0.0
    assert info["positions"] == (0.0,)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([1.0], np.float32))


# --- actions ---------------------------------------------------------------------------------


def test_the_discrete_encoding_is_base_3_digits_short_flat_long_symbol_0_first() -> None:
    table = [discrete_targets(action, 2, 0.5) for action in range(9)]
    assert table == [
        (-0.5, -0.5),
        (0.0, -0.5),
        (0.5, -0.5),
        (-0.5, 0.0),
        (0.0, 0.0),
        (0.5, 0.0),
        (-0.5, 0.5),
        (0.0, 0.5),
        (0.5, 0.5),
    ]
    env = TradingEnvironment(random_market(n_symbols=3), env_spec(action_space="discrete"))
    assert env.action_space.n == 27  # type: ignore[attr-defined]
    env.reset()
    _, _, _, _, info = env.step(2 + 0 * 3 + 1 * 9)  # long S0, short S1, flat S2
    assert info["positions"] == (1.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="outside"):
        env.step(27)


@pytest.mark.parametrize("action_space", ["discrete", "continuous"])
def test_max_position_size_bounds_every_weight(action_space: str) -> None:
    spec = env_spec(action_space=action_space, max_position_size=0.3, episode_length=50)
    env = TradingEnvironment(random_market(n_bars=60), spec, seed=0)
    env.reset()
    env.action_space.seed(0)
    for _ in range(50):
        observation, *_, info = env.step(env.action_space.sample())
        assert np.abs(info["positions"]).max() <= 0.3
        np.testing.assert_allclose(observation[-2:], info["positions"], rtol=1e-7)
    if action_space == "continuous":
        env.reset()
        *_, info = env.step(np.array([5.0, -7.0], np.float32))  # clipped to [-1, 1] first
        assert info["positions"] == (0.3, -0.3)


def test_a_continuous_action_of_the_wrong_length_is_rejected() -> None:
    env = TradingEnvironment(random_market(), env_spec())
    env.reset()
    with pytest.raises(ValueError, match="2 values"):
        env.step(np.zeros(3, np.float32))


# --- rewards ---------------------------------------------------------------------------------

# Long 100 % with no costs: the step returns are 0 (flat through the first bar), then
# these bar returns.
BAR_RETURNS = [0.01, -0.02, 0.03, 0.0, -0.01, 0.02, 0.015, -0.005]


def _rewards(kind: str, window: int = 3) -> list[float]:
    prices = 100.0 * np.cumprod([1.0, 1.0, 1.0, 1.0, *[1.0 + r for r in BAR_RETURNS]])
    spec = env_spec(reward=kind, reward_window=window, episode_length=len(BAR_RETURNS) + 1)
    steps = _run(
        TradingEnvironment(market_from_prices(prices), spec), [[1.0]] * (len(BAR_RETURNS) + 1)
    )
    return [float(s[1]) for s in steps[1:]]


STEP_RETURNS = [0.0, *BAR_RETURNS]


def _window(k: int, window: int) -> np.ndarray:
    return np.array(STEP_RETURNS[max(0, k - window + 1) : k + 1])


def test_returns_and_log_returns_rewards() -> None:
    assert _rewards("returns") == pytest.approx(STEP_RETURNS, abs=1e-12)
    assert _rewards("log_returns") == pytest.approx(
        [math.log1p(r) for r in STEP_RETURNS], abs=1e-12
    )


def test_sharpe_reward_is_the_rolling_mean_over_std() -> None:
    expected = []
    for k in range(len(STEP_RETURNS)):
        values = _window(k, 3)
        expected.append(values.mean() / values.std() if values.std() > 1e-9 else 0.0)
    assert _rewards("sharpe") == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert expected[0] == 0.0 and expected[2] != 0.0


def test_sortino_reward_uses_the_downside_deviation() -> None:
    expected = []
    for k in range(len(STEP_RETURNS)):
        values = _window(k, 3)
        downside = math.sqrt(np.mean(np.minimum(values, 0.0) ** 2))
        expected.append(values.mean() / downside if (values < 0).any() else 0.0)
    assert _rewards("sortino") == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert expected[1] == 0.0 and expected[2] != 0.0  # no negative return yet at step 1


def test_differential_sharpe_follows_moody_and_saffell() -> None:
    eta, a, b, expected = 1 / 4, 0.0, 0.0, []
    for r in STEP_RETURNS:
        variance = b - a * a
        expected.append(
            (b * (r - a) - 0.5 * a * (r * r - b)) / variance**1.5 if variance > 0 else 0.0
        )
        a, b = a + eta * (r - a), b + eta * (r * r - b)
    assert _rewards("differential_sharpe", window=4) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_sharpe_of_a_flat_portfolio_is_zero() -> None:
    market = random_market()
    env = TradingEnvironment(market, env_spec(reward="sharpe"))
    steps = _run(env, [[0.0, 0.0]] * 5)
    assert [s[1] for s in steps[1:]] == [0.0] * 5


# --- episodes --------------------------------------------------------------------------------


def test_episodes_have_episode_length_steps_then_truncate() -> None:
    env = TradingEnvironment(random_market(), env_spec(episode_length=4))
    steps = _run(env, [[0.1, 0.1]] * 4)
    assert [s[3] for s in steps[1:]] == [False, False, False, True]
    assert [s[4]["step"] for s in steps[1:]] == [1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2, np.float32))


def test_random_starts_are_seeded_and_leave_room_for_the_episode() -> None:
    market, spec = random_market(n_bars=30), env_spec(random_start=True, episode_length=5)
    starts = []
    env = TradingEnvironment(market, spec, seed=11)
    for _ in range(200):
        env.reset()
        starts.append(env.bar)
    assert min(starts) == 2 and max(starts) == 30 - 1 - 5  # lookback - 1 .. T - 1 - episodeLength
    again = TradingEnvironment(market, spec, seed=11)
    assert [again.reset()[0] is not None and again.bar for _ in range(200)] == starts
    fixed = TradingEnvironment(market, spec, seed=11, random_start=False)
    assert {fixed.reset()[0] is not None and fixed.bar for _ in range(5)} == {2}


def test_a_market_too_short_for_an_episode_is_a_data_error() -> None:
    with pytest.raises(DataError, match="episodeLength"):
        TradingEnvironment(random_market(n_bars=7), env_spec(lookback_window=3, episode_length=5))
    TradingEnvironment(random_market(n_bars=8), env_spec(lookback_window=3, episode_length=5))


def test_discrete_actions_are_limited_to_twelve_symbols() -> None:
    with pytest.raises(ValueError, match="at most 12"):
        TradingEnvironment(random_market(n_symbols=13), env_spec(action_space="discrete"))


# --- observations and the generated step arithmetic -----------------------------------------


@pytest.mark.parametrize("block", [1, 3, 256])
def test_observations_are_never_written_after_they_are_returned(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tradewind.trainer.rl import env as env_module

    monkeypatch.setattr(env_module, "OBSERVATION_BLOCK", block)
    market = random_market(n_bars=40, n_symbols=2, seed=4)
    lookback = 4
    env = TradingEnvironment(
        market, env_spec(lookback_window=lookback, episode_length=9, random_start=True), seed=1
    )
    actions = np.random.default_rng(2).uniform(-1.5, 1.5, (30, 2)).astype(np.float32)
    kept: list[tuple[np.ndarray, np.ndarray]] = []  # (as returned, a copy taken then)
    observation, _ = env.reset()
    for action in actions:
        kept.append((observation, observation.copy()))
        bar, weights = env.bar, np.clip(action, -1, 1) * 1.0
        # What the observation holds: the window of bars <= t, then the weights held.
        np.testing.assert_array_equal(
            observation[:-2], market.features[bar - lookback + 1 : bar + 1].reshape(-1)
        )
        observation, _, terminated, truncated, _ = env.step(action)
        np.testing.assert_array_equal(observation[-2:], weights.astype(np.float32))
        if terminated or truncated:
            kept.append((observation, observation.copy()))
            observation, _ = env.reset()
    assert len(kept) > 30  # several episodes, each re-visiting bars of the last
    for returned, then in kept:
        np.testing.assert_array_equal(returned, then)
    assert len({id(returned) for returned, _ in kept}) == len(kept)


@pytest.mark.parametrize("n_symbols", [1, 2, 5, 32])
def test_generated_step_arithmetic_is_the_loops_bit_for_bit(n_symbols: int) -> None:
    from tradewind.trainer.rl.env import UNROLL_LIMIT, _account_loop, _clip_loop, _kernels

    assert n_symbols <= UNROLL_LIMIT
    clip, account = _kernels(n_symbols)
    rng = np.random.default_rng(n_symbols)
    for trial in range(200):
        values = rng.uniform(-2, 2, n_symbols).tolist()
        assert clip(values, 0.7) == _clip_loop(values, 0.7)
        weights = tuple(rng.uniform(-3 if trial % 4 == 0 else -1, 1, n_symbols).tolist())
        moves = [
            *rng.normal(0, 0.3, n_symbols).tolist(),
            *rng.uniform(0.5, 1.5, n_symbols).tolist(),
        ]
        targets = tuple(rng.uniform(-1, 1, n_symbols).tolist())
        assert account(weights, moves, targets) == _account_loop(weights, moves, targets)
    assert account(
        (2.0,) * n_symbols, [-1.0] * n_symbols + [0.0] * n_symbols, (0.0,) * n_symbols
    ) == (
        1.0 - 2.0 * n_symbols,
        0.0,
    )  # bankrupt: no turnover


@pytest.mark.parametrize("reward", REWARDS)
def test_an_environment_pickled_mid_episode_continues_identically(reward: str) -> None:
    import pickle

    spec = env_spec(reward=reward, reward_window=3, episode_length=12, transaction_cost=0.001)
    env = TradingEnvironment(random_market(n_bars=30, seed=7), spec, seed=3)
    actions = np.random.default_rng(5).uniform(-1, 1, (10, 2)).astype(np.float32)
    env.reset()
    for action in actions[:5]:
        env.step(action)
    twin = pickle.loads(pickle.dumps(env))
    for action in actions[5:]:
        mine, theirs = env.step(action), twin.step(action)
        np.testing.assert_array_equal(mine[0], theirs[0])
        assert mine[1:] == theirs[1:]
