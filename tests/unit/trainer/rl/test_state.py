"""An agent's checkpoint as tensors and numbers: restored into an agent built from its spec,
it continues exactly like the same agent restored with SB3's own (pickling) `load`, and
restoring it unpickles nothing."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from tests.unit.trainer.rl.markets import random_market
from tests.unit.trainer.test_rl_agents import SMALL
from tradewind.api.rl import RLRunSpec
from tradewind.trainer.checkpoint import Checkpointer, set_rng_state
from tradewind.trainer.rl.agents import ALGORITHMS, build_agent
from tradewind.trainer.rl.market import Markets, split_market
from tradewind.trainer.rl.training import AgentEnvs, agent_state, make_envs, restore_agent
from tradewind.trainer.storage import LocalStore

ALL = ["ppo", "a2c", "sac", "td3", "dqn"]
SB3_COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "_n_calls",
    "exploration_rate",
)
"""What SB3 advances while learning, restored by its `load`."""


def agent_spec(algorithm: str, normalize: bool = True) -> RLRunSpec:
    space = "discrete" if algorithm == "dqn" else "continuous"
    return RLRunSpec.model_validate(
        {
            "environment": {"lookbackWindow": 3, "episodeLength": 20, "actionSpace": space},
            "agents": [
                {"name": algorithm, "algorithm": algorithm, "hyperparameters": SMALL[algorithm]}
            ],
            "totalTimesteps": 10_000,
            "nEnvs": 2,
            "normalize": normalize,
            "eval": {"freq": 10_000, "episodes": 1},
        }
    )


def agent_markets(spec: RLRunSpec) -> Markets:
    return split_market(random_market(n_bars=120, seed=3), spec.environment, 0.2, 0.2)


def trained(spec: RLRunSpec, markets: Markets, steps: int = 96) -> tuple[BaseAlgorithm, AgentEnvs]:
    envs = make_envs(spec, markets.train, markets.validation, seed=0)
    model = build_agent(spec.agents[0], envs.train, seed=0, device="cpu")
    model.learn(steps)
    return model, envs


def _sb3_restore(
    spec: RLRunSpec, markets: Markets, model: BaseAlgorithm, envs: AgentEnvs, rng: Any
) -> tuple[BaseAlgorithm, AgentEnvs]:
    """The reference: how the agent was restored before, through SB3's `load` and
    `load_replay_buffer` (cloudpickle) of files this test wrote itself."""
    model_zip, buffer = io.BytesIO(), io.BytesIO()
    model.save(model_zip)
    if isinstance(model, OffPolicyAlgorithm):
        model.save_replay_buffer(buffer)
    fresh = make_envs(spec, markets.train, markets.validation, seed=0)
    if isinstance(envs.train, VecNormalize) and isinstance(fresh.train, VecNormalize):
        fresh.train.obs_rms, fresh.train.ret_rms = (
            envs.train.obs_rms.copy(),
            envs.train.ret_rms.copy(),
        )
    model_zip.seek(0)
    loaded = ALGORITHMS[spec.agents[0].algorithm].load(model_zip, env=fresh.train, device="cpu")
    if isinstance(loaded, OffPolicyAlgorithm):
        buffer.seek(0)
        loaded.load_replay_buffer(buffer)
    set_rng_state(rng)
    return loaded, fresh


@pytest.mark.parametrize("algorithm", ALL)
def test_a_restored_agent_continues_exactly_like_sb3_load(algorithm: str, tmp_path: Path) -> None:
    spec = agent_spec(algorithm)
    markets = agent_markets(spec)
    model, envs = trained(spec, markets)
    checkpointer = Checkpointer(LocalStore(tmp_path))
    checkpointer.save(model.num_timesteps, agent_state(model, envs))
    state = checkpointer.load_latest()
    assert state is not None

    ours_envs = make_envs(spec, markets.train, markets.validation, seed=0)
    ours = restore_agent(spec.agents[0], state, ours_envs, "cpu", seed=0)
    assert ours.num_timesteps == model.num_timesteps > 0
    ours.learn(64, reset_num_timesteps=False)
    theirs, theirs_envs = _sb3_restore(spec, markets, model, envs, state["rng"])
    theirs.learn(64, reset_num_timesteps=False)

    for name in SB3_COUNTERS:
        assert getattr(ours, name, None) == getattr(theirs, name, None), name
    ours_params, theirs_params = ours.get_parameters(), theirs.get_parameters()
    assert ours_params.keys() == theirs_params.keys()
    for key, ours_tensors in ours_params["policy"].items():
        assert torch.equal(ours_tensors, theirs_params["policy"][key]), key
    for key in ours_params:  # optimisers: same steps taken from the same moments
        assert str(ours_params[key]) == str(theirs_params[key]), key
    if isinstance(ours, OffPolicyAlgorithm):
        ours_buffer, theirs_buffer = ours.replay_buffer, theirs.replay_buffer
        assert ours_buffer is not None and theirs_buffer is not None
        assert (ours_buffer.pos, ours_buffer.full) == (theirs_buffer.pos, theirs_buffer.full)
        for name in ("observations", "next_observations", "actions", "rewards", "dones"):
            np.testing.assert_array_equal(getattr(ours_buffer, name), getattr(theirs_buffer, name))
    assert isinstance(ours_envs.train, VecNormalize) and isinstance(theirs_envs.train, VecNormalize)
    np.testing.assert_array_equal(ours_envs.train.obs_rms.mean, theirs_envs.train.obs_rms.mean)
    assert ours_envs.train.ret_rms.count == theirs_envs.train.ret_rms.count


def test_the_checkpoint_holds_only_tensors_numbers_and_strings(tmp_path: Path) -> None:
    spec = agent_spec("sac")
    model, envs = trained(spec, agent_markets(spec))
    state = agent_state(model, envs)

    def leaves(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [leaf for item in value.values() for leaf in leaves(item)]
        if isinstance(value, list | tuple):
            return [leaf for item in value for leaf in leaves(item)]
        return [value]

    kinds = {type(leaf) for leaf in leaves(state)}
    assert kinds <= {torch.Tensor, int, float, bool, str, type(None)}, kinds
    # The replay buffer keeps the filled rows only.
    assert state["replay_buffer"]["arrays"]["rewards"].shape[0] == model.replay_buffer.size()  # type: ignore[attr-defined]


@pytest.mark.parametrize("algorithm", ["sac", "ppo"])
def test_restoring_unpickles_nothing(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = agent_spec(algorithm)
    markets = agent_markets(spec)
    model, envs = trained(spec, markets)
    checkpointer = Checkpointer(LocalStore(tmp_path))
    checkpointer.save(model.num_timesteps, agent_state(model, envs))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    for module in (pickle, cloudpickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(module, name, refuse, raising=False)
    state = checkpointer.load_latest()
    assert state is not None
    fresh = make_envs(spec, markets.train, markets.validation, seed=0)
    restored = restore_agent(spec.agents[0], state, fresh, "cpu", seed=0)
    assert restored.num_timesteps == model.num_timesteps
