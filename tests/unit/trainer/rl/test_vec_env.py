from typing import Any

import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

from tests.unit.trainer.rl.markets import env_spec, random_market
from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.rl import BatchedTradingEnv, Market, TradingEnvironment

REWARDS = ("returns", "log_returns", "sharpe", "sortino", "differential_sharpe")


class SingleEnvironments:
    """N TradingEnvironments stepped one by one with SB3's autoreset (DummyVecEnv's logic),
    keeping the float64 rewards (DummyVecEnv stores them as float32)."""

    def __init__(self, market: Market, spec: EnvironmentSpec, n_envs: int, seed: int) -> None:
        self.envs = [TradingEnvironment(market, spec, seed=seed + i) for i in range(n_envs)]
        self.reset_infos: list[dict[str, Any]] = [{} for _ in self.envs]

    def reset(self, seed: int | None = None) -> np.ndarray:
        observations = []
        for i, env in enumerate(self.envs):
            observation, self.reset_infos[i] = env.reset(seed=None if seed is None else seed + i)
            observations.append(observation)
        return np.stack(observations)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        observations, rewards, dones, infos = [], [], [], []
        for i, env in enumerate(self.envs):
            observation, reward, terminated, truncated, info = env.step(actions[i])
            info["TimeLimit.truncated"] = truncated and not terminated
            if terminated or truncated:
                info["terminal_observation"] = observation
                observation, self.reset_infos[i] = env.reset()
            observations.append(observation)
            rewards.append(reward)
            dones.append(terminated or truncated)
            infos.append(info)
        return np.stack(observations), np.array(rewards), np.array(dones), infos


def _assert_same_infos(batched: list[dict[str, Any]], single: list[dict[str, Any]]) -> None:
    assert len(batched) == len(single)
    for mine, theirs in zip(batched, single, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, np.ndarray):
                assert mine[key].dtype == value.dtype, key
                np.testing.assert_array_equal(mine[key], value, err_msg=key)
            else:
                assert mine[key] == value, key
                assert type(mine[key]) is type(value), key


def _assert_last_step_matches(
    last_step: dict[str, np.ndarray], infos: list[dict[str, Any]]
) -> None:
    for key, values in last_step.items():
        expected = [info[key] for info in infos]
        if key == "positions":
            assert list(map(tuple, values.tolist())) == expected
        else:
            assert values.tolist() == expected, key


def _random_actions(
    spec: EnvironmentSpec, n_envs: int, n_symbols: int, rng: np.random.Generator
) -> np.ndarray:
    if spec.action_space == "discrete":
        return rng.integers(0, 3**n_symbols, n_envs)
    return rng.uniform(-1.3, 1.3, (n_envs, n_symbols)).astype(np.float32)  # some clipped


def _compare(
    market: Market, spec: EnvironmentSpec, n_envs: int = 5, n_steps: int = 60
) -> dict[str, int]:
    """Step both for n_steps with random actions: every output identical, bit for bit."""
    batched = BatchedTradingEnv(market, spec, n_envs, seed=100, infos="full")
    single = SingleEnvironments(market, spec, n_envs, seed=100)
    np.testing.assert_array_equal(batched.reset(), single.reset())
    _assert_same_infos(batched.reset_infos, single.reset_infos)
    rng = np.random.default_rng(7)
    counts = {"done": 0, "terminated": 0}
    for _ in range(n_steps):
        actions = _random_actions(spec, n_envs, market.num_symbols, rng)
        observations, rewards, dones, infos = batched.step(actions)
        expected = single.step(actions)
        np.testing.assert_array_equal(observations, expected[0])
        assert isinstance(observations, np.ndarray) and observations.dtype == np.float32
        np.testing.assert_array_equal(rewards, expected[1])
        np.testing.assert_array_equal(dones, expected[2])
        _assert_same_infos(infos, expected[3])
        _assert_same_infos(batched.reset_infos, single.reset_infos)
        _assert_last_step_matches(batched.last_step, expected[3])
        np.testing.assert_array_equal(batched.bars, [env.bar for env in single.envs])
        counts["done"] += int(dones.sum())
        counts["terminated"] += sum(
            d and not i["TimeLimit.truncated"] for d, i in zip(dones, infos, strict=True)
        )
    return counts


@pytest.mark.parametrize("action_space", ["discrete", "continuous"])
@pytest.mark.parametrize("reward", REWARDS)
def test_batched_env_is_step_for_step_identical_to_single_envs(
    action_space: str, reward: str
) -> None:
    spec = env_spec(
        action_space=action_space,
        reward=reward,
        reward_window=4,
        episode_length=6,
        random_start=True,
        transaction_cost=0.001,
        slippage=0.0005,
        max_position_size=0.8,
    )
    counts = _compare(random_market(n_bars=40, n_symbols=3, volatility=0.03, seed=9), spec)
    assert counts["done"] >= 40  # several autoresets per environment


def test_batched_env_matches_with_many_symbols() -> None:
    # Above 16 symbols the sums over symbols use cumsum instead of a loop over columns.
    spec = env_spec(episode_length=4, random_start=True, transaction_cost=0.001, reward="sharpe")
    _compare(random_market(n_bars=20, n_symbols=17, seed=8), spec, n_envs=3, n_steps=12)


@pytest.mark.parametrize("action_space", ["discrete", "continuous"])
def test_batched_env_matches_through_bankruptcies(action_space: str) -> None:
    spec = env_spec(
        action_space=action_space,
        reward="log_returns",
        episode_length=8,
        random_start=True,
        transaction_cost=0.01,
        max_position_size=4.0,
    )
    counts = _compare(random_market(n_bars=30, n_symbols=2, volatility=0.25, seed=2), spec)
    assert counts["terminated"] > 0  # the bankrupt path was exercised


def test_episode_end_infos_carry_the_portfolio_only_when_an_episode_ends() -> None:
    market = random_market(n_bars=30, n_symbols=2, seed=6)
    spec = env_spec(episode_length=4, random_start=True, transaction_cost=0.001)
    full = BatchedTradingEnv(market, spec, 3, seed=5, infos="full")
    lean = BatchedTradingEnv(market, spec, 3, seed=5)  # infos="episode_end", the default
    np.testing.assert_array_equal(full.reset(), lean.reset())
    actions = np.random.default_rng(3).uniform(-1, 1, (10, 3, 2)).astype(np.float32)
    ended = 0
    for batch in actions:
        expected, got = full.step(batch), lean.step(batch)
        for mine, theirs in zip(got[:3], expected[:3], strict=True):
            np.testing.assert_array_equal(mine, theirs)
        for done, mine_info, full_info in zip(got[2], got[3], expected[3], strict=True):
            if done:  # the final portfolio of the episode, and what SB3 reads
                _assert_same_infos([mine_info], [full_info])
                ended += 1
            else:
                assert mine_info == {"TimeLimit.truncated": False}
        _assert_last_step_matches(lean.last_step, expected[3])
    assert ended >= 6
    assert len({id(info) for info in got[3]}) == 3  # a fresh dict per environment
    with pytest.raises(ValueError, match="infos must be"):
        BatchedTradingEnv(market, spec, 3, infos="some")  # type: ignore[arg-type]


def test_batched_env_matches_dummy_vec_env_and_its_seeding() -> None:
    market = random_market(n_bars=40, n_symbols=2, seed=4)
    spec = env_spec(
        reward="differential_sharpe", episode_length=5, random_start=True, transaction_cost=0.002
    )
    batched = BatchedTradingEnv(market, spec, 3, infos="full")
    dummy = DummyVecEnv([lambda: TradingEnvironment(market, spec) for _ in range(3)])
    assert batched.seed(42) == dummy.seed(42) == [42, 43, 44]
    np.testing.assert_array_equal(batched.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    for _ in range(30):
        actions = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        observations, rewards, dones, infos = batched.step(actions)
        expected = dummy.step(actions)
        np.testing.assert_array_equal(observations, expected[0])
        np.testing.assert_array_equal(rewards.astype(np.float32), expected[1])
        np.testing.assert_array_equal(dones, expected[2])
        _assert_same_infos(infos, expected[3])


def test_spaces_and_the_vec_env_interface() -> None:
    market, spec = random_market(), env_spec(action_space="discrete")
    batched = BatchedTradingEnv(market, spec, 4, seed=0)
    single = TradingEnvironment(market, spec)
    assert batched.observation_space == single.observation_space
    assert batched.action_space == single.action_space
    assert batched.render_mode is None and batched.num_envs == 4
    assert batched.get_attr("random_start") == [False] * 4
    assert batched.get_attr("env_spec", indices=[1, 2]) == [spec, spec]
    assert batched.env_is_wrapped(Monitor) == [False] * 4
    assert batched.has_attr("market") and not batched.has_attr("no_such_attribute")
    batched.set_attr("random_start", True)
    assert batched.random_start is True
    with pytest.raises(ValueError, match="shared"):
        batched.set_attr("random_start", False, indices=[0])
    batched.set_attr("scaled", lambda value: 2 * value)
    assert batched.env_method("scaled", 3, indices=[0, 2]) == [6, 6]
    with pytest.raises(RuntimeError, match="step_async"):
        batched.step_wait()
    batched.reset()
    with pytest.raises(ValueError, match="discrete actions"):
        batched.step(np.array([0, 1, 2, 9]))
    batched.close()


def test_sb3_wrappers_and_ppo_run_on_the_batched_env() -> None:
    from stable_baselines3 import PPO

    spec = env_spec(episode_length=10, random_start=True, reward="differential_sharpe")
    venv = VecNormalize(VecMonitor(BatchedTradingEnv(random_market(n_bars=40), spec, 4, seed=0)))
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert (
        model.ep_info_buffer is not None and len(model.ep_info_buffer) >= 4
    )  # VecMonitor saw the autoresets


def test_batched_env_matches_above_the_unroll_limit() -> None:
    # Above UNROLL_LIMIT symbols the single environment's arithmetic runs as loops.
    from tradewind.trainer.rl.env import UNROLL_LIMIT

    spec = env_spec(episode_length=4, random_start=True, transaction_cost=0.001)
    market = random_market(n_bars=20, n_symbols=UNROLL_LIMIT + 1, seed=5)
    _compare(market, spec, n_envs=2, n_steps=10)
