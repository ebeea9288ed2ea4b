"""SB3 agents from AgentSpecs on the batched trading env, their serialisation (model and
replay buffer), and the ensemble's combination rules."""

import numpy as np
import pytest

from tests.unit.trainer.rl.markets import env_spec, random_market
from tradewind.api.rl import AgentSpec
from tradewind.trainer.rl.agents import (
    build_agent,
    load_agent,
    model_bytes,
    replay_buffer_bytes,
    restore_replay_buffer,
    sb3_kwargs,
)
from tradewind.trainer.rl.ensemble import Member, RLEnsemble, decode_discrete, encode_discrete
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
def test_each_algorithm_learns_saves_and_loads(algorithm: str) -> None:
    agent = AgentSpec(name=algorithm, algorithm=algorithm, hyperparameters=SMALL[algorithm])
    env = _env(algorithm)
    model = build_agent(agent, env, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    restored = load_agent(agent, model_bytes(model), env, device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(
        model.predict(obs, deterministic=True)[0], restored.predict(obs, deterministic=True)[0]
    )
    buffer = replay_buffer_bytes(model)
    assert (buffer is not None) == (algorithm in ("sac", "td3", "dqn"))
    if buffer is not None:
        restore_replay_buffer(restored, buffer)
        assert restored.replay_buffer.size() == model.replay_buffer.size() > 0  # type: ignore[union-attr]


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
