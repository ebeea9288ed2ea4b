"""stable-baselines3 agents from AgentSpecs: algorithm, policy network and hyperparameters.
Checkpoints restore into an agent built here (`tradewind.trainer.rl.state`), never through
SB3's `load`, which unpickles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecEnv

from tradewind.api.hyperparameters import resolve_hyperparameters
from tradewind.api.rl import AgentSpec

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "sac": SAC,
    "td3": TD3,
    "dqn": DQN,
}
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
}


def sb3_kwargs(agent: AgentSpec, env: VecEnv) -> dict[str, Any]:
    """The constructor arguments of the agent's SB3 algorithm: rl-zoo3 names, SB3 defaults
    for what the spec leaves unset, the policy network from net_arch/activation_fn."""
    params = resolve_hyperparameters(agent.algorithm, agent.hyperparameters).model_dump()
    policy_kwargs = {
        "net_arch": params.pop("net_arch"),
        "activation_fn": ACTIVATIONS[params.pop("activation_fn")],
    }
    if agent.algorithm == "sac" and params.get("ent_coef") is None:
        params["ent_coef"] = "auto"
    if agent.algorithm == "td3":
        sigma = params.pop("action_noise_std")
        n = int(np.prod(env.action_space.shape or (1,)))
        params["action_noise"] = (
            NormalActionNoise(np.zeros(n), sigma * np.ones(n)) if sigma > 0 else None
        )
    if agent.algorithm in ("ppo", "a2c"):
        # An n_steps rollout per env; PPO's batch must divide n_steps x n_envs.
        params["n_steps"] = max(1, params["n_steps"])
    return {"policy_kwargs": policy_kwargs, **{k: v for k, v in params.items() if v is not None}}


def build_agent(agent: AgentSpec, env: VecEnv, seed: int, device: str = "auto") -> BaseAlgorithm:
    """A fresh SB3 model of the agent on `env`."""
    cls = ALGORITHMS[agent.algorithm]
    return cls(agent.policy, env, seed=seed, device=device, verbose=0, **sb3_kwargs(agent, env))
