"""FiniteTrainingCheck: an agent whose losses or parameters go NaN stops with
NonFiniteLossError (exit 65) instead of acting on them or being retried."""

from __future__ import annotations

import math

import pytest
import torch
from stable_baselines3 import PPO

from tests.unit.trainer.rl.markets import env_spec, random_market
from tradewind.api.rl import AgentSpec
from tradewind.trainer.entrypoint import NonFiniteLossError
from tradewind.trainer.rl.agents import build_agent
from tradewind.trainer.rl.finite import FiniteTrainingCheck, non_finite_losses
from tradewind.trainer.rl.vec_env import BatchedTradingEnv

ROLLOUT = 32
"""PPO's rollout below: 16 steps of 2 environments."""


def _ppo() -> PPO:
    env = BatchedTradingEnv(random_market(n_bars=80), env_spec(), n_envs=2, seed=0)
    hyperparameters = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "net_arch": [8]}
    agent = AgentSpec(name="ppo", algorithm="ppo", hyperparameters=hyperparameters)
    model = build_agent(agent, env, seed=0, device="cpu")
    assert isinstance(model, PPO)
    return model


def test_only_logged_losses_that_are_not_finite_count() -> None:
    logged = {
        "train/loss": math.nan,
        "train/critic_loss": math.inf,
        "train/actor_loss": 0.5,
        "train/explained_variance": math.nan,  # SB3 logs NaN here for a constant target
        "rollout/ep_rew_mean": math.inf,
    }
    assert non_finite_losses(logged).keys() == {"train/loss", "train/critic_loss"}


def test_healthy_training_goes_on() -> None:
    model = _ppo()
    model.learn(total_timesteps=3 * ROLLOUT, callback=FiniteTrainingCheck())
    assert model.num_timesteps == 3 * ROLLOUT


def test_a_nan_parameter_stops_training_before_the_policy_acts() -> None:
    model = _ppo()
    with torch.no_grad():
        next(model.policy.parameters())[0].fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="PPO training diverged at 0 timesteps: a param"):
        model.learn(total_timesteps=ROLLOUT, callback=FiniteTrainingCheck())
    with pytest.raises(ValueError):  # without it: torch.distributions, a retried failure
        model.learn(total_timesteps=ROLLOUT)


def test_a_nan_loss_of_the_last_update_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _ppo()
    update = model.train

    def diverging_update() -> None:
        update()
        model.logger.record("train/value_loss", math.nan)

    monkeypatch.setattr(model, "train", diverging_update)
    with pytest.raises(NonFiniteLossError, match=f"at {ROLLOUT} timesteps: train/value_loss=nan"):
        model.learn(total_timesteps=ROLLOUT, callback=FiniteTrainingCheck())
