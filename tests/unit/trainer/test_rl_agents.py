"""SB3 agents from AgentSpecs on the batched trading env: that each algorithm learns, their
serialisation (model and replay buffer), and the ensemble's combination rules."""

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
from stable_baselines3.common.base_class import BaseAlgorithm

from tests.unit.trainer.rl.markets import env_spec, random_market
from tradewind.api.rl import AgentSpec
from tradewind.trainer.rl.agents import build_agent, sb3_kwargs
from tradewind.trainer.rl.ensemble import Member, RLEnsemble, decode_discrete, encode_discrete
from tradewind.trainer.rl.market import Market
from tradewind.trainer.rl.state import agent_tensors, load_agent_tensors
from tradewind.trainer.rl.vec_env import BatchedTradingEnv

SMALL = {
    "ppo": {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "net_arch": [8]},
    "a2c": {"n_steps": 4, "net_arch": [8]},
    "sac": {"buffer_size": 500, "learning_starts": 10, "batch_size": 8, "net_arch": [8]},
    "td3": {"buffer_size": 500, "learning_starts": 10, "batch_size": 8, "net_arch": [8]},
    "dqn": {"buffer_size": 500, "learning_starts": 10, "batch_size": 8, "net_arch": [8]},
}


def _env(algorithm: str) -> BatchedTradingEnv:
    space = "discrete" if algorithm == "dqn" else "continuous"
    return BatchedTradingEnv(
        random_market(n_bars=80), env_spec(action_space=space), n_envs=2, seed=0
    )


@pytest.mark.parametrize("algorithm", ["ppo", "a2c", "sac", "td3", "dqn"])
def test_each_algorithm_saves_and_loads(algorithm: str) -> None:
    agent = AgentSpec(name=algorithm, algorithm=algorithm, hyperparameters=SMALL[algorithm])
    env = _env(algorithm)
    model = build_agent(agent, env, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    state = agent_tensors(model, env)
    assert ("replay_buffer" in state) == (algorithm in ("sac", "td3", "dqn"))
    restored = build_agent(agent, env, seed=1, device="cpu")
    load_agent_tensors(restored, state)
    obs = env.reset()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], restored.predict(obs, deterministic=True)[0]
    )
    assert restored.num_timesteps == model.num_timesteps
    if "replay_buffer" in state:
        assert restored.replay_buffer.size() == model.replay_buffer.size() > 0  # type: ignore[attr-defined]


# --- learning ------------------------------------------------------------------------------

MOVE = 0.1
"""Every bar moves the price up or down by this fraction."""
EPISODE = 10
OFF_POLICY: dict[str, Any] = {"buffer_size": 5_000, "learning_starts": 100, "batch_size": 64}
LEARNS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 64, "batch_size": 64, "n_epochs": 4},
    "a2c": {"n_steps": 8},
    "dqn": {
        **OFF_POLICY,
        "train_freq": 1,
        "target_update_interval": 100,
        "exploration_fraction": 0.3,
    },
    "sac": {**OFF_POLICY, "ent_coef": 0.01, "tau": 0.05},
    "td3": {**OFF_POLICY, "tau": 0.05, "action_noise_std": 0.3},
}
"""Small, quick settings; gamma 0.5 because only the next step's reward depends on an action."""
Policy = Callable[[np.ndarray], np.ndarray]


def signal_market(n_bars: int, seed: int) -> Market:
    """One symbol whose price moves by +-MOVE each bar at random, and one feature that says
    which way: at bar t, the sign of the move of bar t+1 -> t+2, the move a position taken
    after observing bar t earns (it fills at bar t+1). The right action is obvious from the
    observation, and a policy that ignores it earns nothing on average."""
    rng = np.random.default_rng(seed)
    moves = rng.choice([-1.0, 1.0], size=n_bars)
    moves[0] = 0.0
    signal = np.zeros(n_bars, np.float32)
    signal[:-2] = moves[2:]
    return Market(
        features=signal.reshape(n_bars, 1, 1),
        prices=(100.0 * np.cumprod(1.0 + MOVE * moves)).reshape(n_bars, 1).astype(np.float64),
        timestamps=np.datetime64("2020-01-01") + np.arange(n_bars).astype("timedelta64[D]"),
        symbols=("S0",),
        feature_names=("next_move",),
    )


def _signal_env(market: Market, algorithm: str, n_envs: int, seed: int) -> BatchedTradingEnv:
    space = "discrete" if algorithm == "dqn" else "continuous"
    spec = env_spec(
        action_space=space, lookback_window=2, episode_length=EPISODE, random_start=True
    )
    return BatchedTradingEnv(market, spec, n_envs=n_envs, seed=seed)


def episode_returns(env: BatchedTradingEnv, act: Policy) -> np.ndarray:
    """The summed rewards of one episode in each of `env`'s environments."""
    obs, total = env.reset(), np.zeros(env.num_envs)
    for _ in range(EPISODE):
        step_obs, rewards, _, _ = env.step(act(obs))
        obs = np.asarray(step_obs)
        total += rewards
    return total


def greedy(model: BaseAlgorithm) -> Policy:
    return lambda obs: np.asarray(model.predict(obs, deterministic=True)[0])


def uniform(space: gymnasium.Space[Any], seed: int) -> Policy:
    space.seed(seed)
    return lambda obs: np.array([space.sample() for _ in range(len(obs))])


@pytest.mark.usefixtures("torch_sandbox")
@pytest.mark.parametrize("algorithm", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_each_algorithm_learns_to_trade_an_obvious_signal(algorithm: str) -> None:
    hyperparameters = {"net_arch": [16], "gamma": 0.5, "learning_rate": 3e-3, **LEARNS[algorithm]}
    agent = AgentSpec(name=algorithm, algorithm=algorithm, hyperparameters=hyperparameters)
    train = _signal_env(signal_market(300, seed=0), algorithm, n_envs=4, seed=0)
    model = build_agent(agent, train, seed=0, device="cpu")
    held_out = signal_market(300, seed=1)  # same rule, other bars: the signal, not the bars

    def returns(act: Policy) -> np.ndarray:
        return episode_returns(_signal_env(held_out, algorithm, n_envs=64, seed=123), act)

    untrained = returns(greedy(model))
    model.learn(total_timesteps=3_000)
    trained = returns(greedy(model))
    random = returns(uniform(train.action_space, seed=5))
    bar = random.mean() + 3 * random.std()
    assert untrained.mean() < bar, "the margin must take learning to clear"
    assert trained.mean() > bar, (algorithm, trained.mean(), bar)


def test_hyperparameters_map_to_sb3_arguments() -> None:
    env = _env("td3")
    kwargs = sb3_kwargs(
        AgentSpec(
            name="t",
            algorithm="td3",
            hyperparameters={"action_noise_std": 0.3, "net_arch": [32, 32]},
        ),
        env,
    )
    assert kwargs["policy_kwargs"]["net_arch"] == [32, 32]
    assert kwargs["action_noise"]._sigma.tolist() == [0.3, 0.3]
    sac = sb3_kwargs(AgentSpec(name="s", algorithm="sac"), env)
    assert sac["ent_coef"] == "auto" and sac["buffer_size"] == 1_000_000


def test_discrete_encoding_round_trips() -> None:
    weights = np.array([[-1.0, 0.0, 1.0], [1.0, 1.0, -1.0]])
    codes = encode_discrete(weights)
    np.testing.assert_array_equal(decode_discrete(codes, 3), weights)
    assert codes[0] == 0 * 1 + 1 * 3 + 2 * 9


def _constant(weights: list[float]):  # type: ignore[no-untyped-def]
    return lambda obs: np.tile(np.array(weights, dtype=np.float32), (len(obs), 1))


def test_weighted_average_majority_and_uncertainty() -> None:
    members = [
        Member("a", _constant([1.0, -1.0]), weight=3.0),
        Member("b", _constant([-1.0, -1.0]), weight=1.0),
        Member("c", _constant([1.0, 1.0]), weight=0.0),
    ]
    obs = np.zeros((2, 4))
    avg = RLEnsemble(members, "weighted_average", discrete=False, n_symbols=2).act(obs)
    np.testing.assert_allclose(avg[0], [0.5, -1.0])
    ensemble = RLEnsemble(members, "majority", discrete=False, n_symbols=2)
    np.testing.assert_allclose(ensemble.act(obs)[0], [1.0, -1.0])
    assert ensemble.last_uncertainty[0] > 0


def test_thompson_sampling_prefers_the_member_that_wins() -> None:
    members = [Member("loser", _constant([-1.0])), Member("winner", _constant([1.0]))]
    ensemble = RLEnsemble(
        members, "thompson_sampling", discrete=False, n_symbols=1, window=50, seed=0
    )
    for _ in range(50):
        ensemble.record([-0.01, 0.01])
    picks = [float(ensemble.act(np.zeros((1, 3)))[0, 0]) for _ in range(50)]
    assert picks.count(1.0) >= 45
