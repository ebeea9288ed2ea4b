"""An agent's resumable state as tensors and plain numbers, and its restoration into an agent
built from its spec: nothing read from a checkpoint is unpickled.

SB3's own `save`/`load` (and `save_replay_buffer`, and pickling VecNormalize) pickle objects
with cloudpickle: loading such a file runs whatever code it names, so a checkpoint written
into a run's prefix by someone else would run in that run's pod. Here a checkpoint holds:

- `params`: SB3's `get_parameters()`, the state dicts of the policy and of its optimisers;
- `variables`: SB3's other torch variables (SAC's `log_ent_coef` or `ent_coef_tensor`);
- `counters`: the numbers SB3 needs to continue where it stopped (timesteps, updates, ...);
- `replay_buffer`: an off-policy agent's transitions (the filled part), `pos` and `full`;
- `vecnormalize`: the running mean, variance and count of observations and returns, and the
  wrapper's settings;

all of which `torch.load(weights_only=True)` reads without running code. The agent is rebuilt
from its AgentSpec (hyperparameters and env) and these are loaded into it: the same state
`BaseAlgorithm.load` restores, except the environment's last observation (SB3 resets the env
on resume in both cases) and the episode-statistics deque (the batched env reports none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from tradewind.trainer.checkpoint import CheckpointError

AGENT_FORMAT = "tradewind.rl.agent/2"
"""Stored under `format` in every agent checkpoint written as tensors and numbers."""

COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "_n_calls",  # DQN: target network updates
    "exploration_rate",  # DQN
)
"""The attributes SB3 advances while learning that `BaseAlgorithm.load` restores and the
constructor does not (the rest are hyperparameters, rebuilt from the spec)."""

BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
PICKLED_KEYS = ("model", "vecnormalize", "replay_buffer")
"""What the pickled format (before AGENT_FORMAT) held as bytes: the SB3 zip, the pickled
VecNormalize and SB3's pickled replay buffer."""


class PickledCheckpointError(CheckpointError):
    """A checkpoint in the old format, whose agent could only be restored by unpickling."""


class AgentStateError(CheckpointError):
    """An agent checkpoint that does not fit the agent built from the spec."""


# --- saving ----------------------------------------------------------------------------------


def agent_tensors(model: BaseAlgorithm, train_env: VecEnv) -> dict[str, Any]:
    """The agent's state (see the module's docstring) as tensors, numbers and strings."""
    _, variable_names = model._get_torch_save_params()
    state: dict[str, Any] = {
        "format": AGENT_FORMAT,
        "algorithm": type(model).__name__.lower(),
        "params": model.get_parameters(),
        "variables": {
            name: _cpu(recursive_getattr(model, name))
            for name in variable_names
            if recursive_getattr(model, name) is not None
        },
        "counters": {
            name: _number(getattr(model, name)) for name in COUNTERS if hasattr(model, name)
        },
    }
    buffer = replay_buffer_tensors(model)
    if buffer is not None:
        state["replay_buffer"] = buffer
    if isinstance(train_env, VecNormalize):
        state["vecnormalize"] = vecnormalize_tensors(train_env)
    return state


def replay_buffer_tensors(model: BaseAlgorithm) -> dict[str, Any] | None:
    """An off-policy agent's transitions (only the filled rows), `pos` and `full`; None for
    on-policy agents."""
    if not isinstance(model, OffPolicyAlgorithm) or model.replay_buffer is None:
        return None
    buffer = model.replay_buffer
    _check_plain_buffer(buffer)
    filled = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {
        name: torch.from_numpy(np.array(getattr(buffer, name)[:filled]))  # a copy: only the rows
        for name in BUFFER_ARRAYS
        if getattr(buffer, name) is not None
    }
    return {"arrays": arrays, "pos": int(buffer.pos), "full": bool(buffer.full)}


def vecnormalize_tensors(env: VecNormalize) -> dict[str, Any]:
    """VecNormalize's running statistics of observations and returns, and its settings."""
    if not isinstance(env.obs_rms, RunningMeanStd):
        raise TypeError("only VecNormalize over a Box observation space is checkpointed")
    return {
        "obs_rms": _rms_tensors(env.obs_rms),
        "ret_rms": _rms_tensors(env.ret_rms),
        "clip_obs": float(env.clip_obs),
        "clip_reward": float(env.clip_reward),
        "gamma": float(env.gamma),
        "epsilon": float(env.epsilon),
        "norm_obs": bool(env.norm_obs),
        "norm_reward": bool(env.norm_reward),
    }


def _rms_tensors(rms: RunningMeanStd) -> dict[str, Any]:
    return {
        "mean": torch.from_numpy(np.array(rms.mean, dtype=np.float64)),
        "var": torch.from_numpy(np.array(rms.var, dtype=np.float64)),
        "count": float(rms.count),
    }


# --- restoring -------------------------------------------------------------------------------


def check_agent_format(state: Mapping[str, Any]) -> None:
    """Refuse a checkpoint that is not in AGENT_FORMAT, before anything of it is used."""
    if not isinstance(state, Mapping):
        raise AgentStateError(f"the checkpoint holds a {type(state).__name__}, not a mapping")
    if state.get("format") == AGENT_FORMAT:
        return
    pickled = [key for key in PICKLED_KEYS if isinstance(state.get(key), torch.Tensor)]
    if pickled:
        raise PickledCheckpointError(
            f"the checkpoint holds the agent in the old pickled format ({', '.join(pickled)} "
            "as pickled bytes); pickled checkpoints are refused because loading one can run "
            "any code. Start the agent afresh (checkpoint.resumeFrom: none, or delete its "
            "checkpoints) to write checkpoints in the current format"
        )
    raise AgentStateError(
        f"the checkpoint's format is {state.get('format')!r}, not {AGENT_FORMAT!r}: "
        "it holds no agent this version can restore"
    )


def load_agent_tensors(model: BaseAlgorithm, state: Mapping[str, Any]) -> None:
    """Load a state from `agent_tensors` into `model`, built from the same AgentSpec on an env
    of the same spaces: policy and optimisers, torch variables, counters, replay buffer."""
    check_agent_format(state)
    algorithm = type(model).__name__.lower()
    if state.get("algorithm") != algorithm:
        raise AgentStateError(
            f"the checkpoint holds a {state.get('algorithm')!r} agent; the spec's is {algorithm!r}"
        )
    _load_state_dicts(model, _mapping(state, "params"))
    _load_variables(model, _mapping(state, "variables"))
    counters = _mapping(state, "counters")
    for name in COUNTERS:
        if hasattr(model, name) and name in counters:
            setattr(model, name, type(getattr(model, name))(_number(counters[name])))
    if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        if "replay_buffer" not in state:
            raise AgentStateError("the checkpoint of an off-policy agent has no replay buffer")
        load_replay_buffer_tensors(model.replay_buffer, _mapping(state, "replay_buffer"))


def _load_state_dicts(model: BaseAlgorithm, params: Mapping[str, Any]) -> None:
    """The policy's and optimisers' state dicts, by the names this algorithm has (SB3's
    `set_parameters` would look up any name the checkpoint gives)."""
    names, _ = model._get_torch_save_params()
    algorithm = type(model).__name__.lower()
    if set(params) != set(names):
        raise AgentStateError(
            f"the checkpoint's state dicts are {sorted(params)}; a {algorithm} agent has "
            f"{sorted(names)}"
        )
    for name in names:
        if not isinstance(params[name], Mapping):
            raise AgentStateError(f"the checkpoint's {name} is not a state dict")
    try:
        model.set_parameters({name: params[name] for name in names}, exact_match=True)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise AgentStateError(
            f"the checkpoint's networks do not fit the agent built from the spec (were "
            f"net_arch or the environment changed?): {err}"
        ) from err


def _load_variables(model: BaseAlgorithm, variables: Mapping[str, Any]) -> None:
    """SB3's torch variables besides the state dicts (SAC's entropy coefficient)."""
    _, names = model._get_torch_save_params()
    for name in names:
        target = recursive_getattr(model, name)
        if target is None:
            continue
        value = variables.get(name)
        if not isinstance(value, torch.Tensor) or value.shape != target.shape:
            raise AgentStateError(f"the checkpoint's {name} is missing or of the wrong shape")
        target.data.copy_(value.to(target.device))


def load_replay_buffer_tensors(buffer: ReplayBuffer, saved: Mapping[str, Any]) -> None:
    """Copy the saved transitions into `buffer` (allocated from the spec's buffer_size)."""
    _check_plain_buffer(buffer)
    pos, full = saved.get("pos"), saved.get("full")
    if not isinstance(pos, int) or not isinstance(full, bool) or not 0 <= pos < buffer.buffer_size:
        raise AgentStateError(
            f"the checkpoint's replay buffer position {pos!r} (full {full!r}) does not fit a "
            f"buffer of {buffer.buffer_size} rows (was buffer_size or nEnvs changed?)"
        )
    filled = buffer.buffer_size if full else pos
    arrays = _mapping(saved, "arrays")
    for name in BUFFER_ARRAYS:
        target = getattr(buffer, name)
        if target is None:
            continue
        value = arrays.get(name)
        expected = (filled, *target.shape[1:])
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            raise AgentStateError(
                f"the checkpoint's replay buffer {name} has shape {shape}, not {expected} "
                "(was buffer_size, nEnvs or the environment changed?)"
            )
        target[:filled] = value.cpu().numpy()
    buffer.pos, buffer.full = pos, full


def load_vecnormalize_tensors(env: VecNormalize, state: Mapping[str, Any]) -> None:
    """Restore VecNormalize's statistics and settings from a state of `agent_tensors`."""
    if not isinstance(env.obs_rms, RunningMeanStd):
        raise TypeError("only VecNormalize over a Box observation space is checkpointed")
    if "vecnormalize" not in state:
        raise AgentStateError("the checkpoint has no VecNormalize statistics (normalize: true)")
    saved = _mapping(state, "vecnormalize")
    _load_rms(env.obs_rms, _mapping(saved, "obs_rms"), "obs_rms")
    _load_rms(env.ret_rms, _mapping(saved, "ret_rms"), "ret_rms")
    env.clip_obs = float(_number(saved.get("clip_obs")))
    env.clip_reward = float(_number(saved.get("clip_reward")))
    env.gamma = float(_number(saved.get("gamma")))
    env.epsilon = float(_number(saved.get("epsilon")))
    env.norm_obs = saved.get("norm_obs") is True
    env.norm_reward = saved.get("norm_reward") is True


def _load_rms(rms: RunningMeanStd, saved: Mapping[str, Any], name: str) -> None:
    mean, var = saved.get("mean"), saved.get("var")
    for part, value in (("mean", mean), ("var", var)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != rms.mean.shape:
            raise AgentStateError(
                f"the checkpoint's VecNormalize {name}.{part} is not an array of shape "
                f"{rms.mean.shape} (was the environment changed?)"
            )
    assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)
    rms.mean = mean.cpu().numpy().astype(np.float64)
    rms.var = var.cpu().numpy().astype(np.float64)
    rms.count = float(_number(saved.get("count")))


# --- helpers ---------------------------------------------------------------------------------


def _check_plain_buffer(buffer: Any) -> None:
    if type(buffer) is not ReplayBuffer:
        raise TypeError(f"only SB3's ReplayBuffer is checkpointed, not {type(buffer).__name__}")


def _mapping(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = state.get(key)
    if not isinstance(value, Mapping):
        raise AgentStateError(f"the checkpoint's {key!r} is missing or not a mapping")
    return value


def _number(value: Any) -> int | float:
    """A counter as a plain int or float (bools and anything else refused)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AgentStateError(f"expected a number in the checkpoint, found {type(value).__name__}")
    return value


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().clone()
