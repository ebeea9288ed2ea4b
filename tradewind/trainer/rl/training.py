"""Training one agent of an RLRun: batched env (+ VecNormalize), the SB3 algorithm,
periodic evaluation on the validation market keeping the best model, resumable checkpoints
(model, replay buffer, normalisation statistics) every `checkpoint.interval` thousand
timesteps, SB3's metrics (as its logger dumps them, every `logInterval`) and evaluation
returns to MLflow. The test market is not read here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from tradewind.api.rl import AgentSpec, RLRunSpec
from tradewind.trainer.checkpoint import (
    Checkpointer,
    CheckpointError,
    rng_state,
    set_rng_state,
)
from tradewind.trainer.rl.agents import build_agent
from tradewind.trainer.rl.extension import make_vec_env
from tradewind.trainer.rl.finite import FiniteTrainingCheck
from tradewind.trainer.rl.market import Market, Markets
from tradewind.trainer.rl.state import (
    AgentStateError,
    agent_tensors,
    check_agent_format,
    load_agent_tensors,
    load_vecnormalize_tensors,
)
from tradewind.trainer.tracking import Tracker

log = logging.getLogger(__name__)


CHECKPOINT_UNIT = 1000
"""`checkpoint.interval` counts thousands of timesteps for an RLRun."""


@dataclass
class AgentEnvs:
    train: VecEnv
    evaluation: VecEnv
    """Over the validation market: periodic evaluation and the choice of the best model."""


def make_envs(spec: RLRunSpec, train: Market, evaluation: Market, seed: int) -> AgentEnvs:
    """The training env (n_envs, random starts) and the evaluation env (fixed start) over
    `evaluation` (the validation market), of `environment.type` (`make_vec_env`), both
    behind VecNormalize when the spec asks, sharing its statistics at evaluation."""
    env = spec.environment
    train_env = make_vec_env(train, env, spec.n_envs, seed=seed)
    eval_env = make_vec_env(evaluation, env, 1, seed=seed + 10_000, random_start=False)
    if spec.normalize:
        train_env = VecNormalize(train_env)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    return AgentEnvs(train_env, eval_env)


def sync_normalization(envs: AgentEnvs) -> None:
    """Evaluate with the training env's current observation statistics."""
    if isinstance(envs.train, VecNormalize) and isinstance(envs.evaluation, VecNormalize):
        envs.evaluation.obs_rms = envs.train.obs_rms.copy()


def next_multiple(timesteps: int, every: int) -> int:
    """The first multiple of `every` above `timesteps`."""
    return (timesteps // every + 1) * every


class TrackerOutput(KVWriter):
    """SB3's logger writing to the Tracker (MLflow, and TensorBoard and W&B where asked):
    the numbers SB3 dumps every `log_interval`, named with `_` for `/` (`train_actor_loss`)
    at the timestep count."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def write(
        self,
        key_values: dict[str, Any],
        key_excluded: dict[str, tuple[str, ...]],
        step: int = 0,
    ) -> None:
        numbers = (int, float, np.integer, np.floating)
        values = {
            key.replace("/", "_"): float(value)
            for key, value in key_values.items()
            if isinstance(value, numbers) and not isinstance(value, bool)
        }
        self.tracker.metrics(values, step=step)

    def close(self) -> None:
        pass


class EvalCheckpointCallback(BaseCallback):
    """At the first rollout end after every `eval.freq` timesteps: evaluate on the validation
    market, log `eval_mean_reward`, checkpoint with it (the best evaluation is the best
    checkpoint). At the first rollout end after every `checkpoint.interval` thousand
    timesteps without an evaluation: checkpoint, unranked (for resuming). `progress` joins
    SB3's metrics, dumped every `log_interval` (`TrackerOutput`). The rollout that reaches
    totalTimesteps is left to the final `evaluate_and_save`."""

    def __init__(
        self, spec: RLRunSpec, envs: AgentEnvs, checkpointer: Checkpointer, tracker: Tracker
    ) -> None:
        super().__init__()
        self.spec, self.envs, self.checkpointer, self.tracker = spec, envs, checkpointer, tracker
        self.eval_every = spec.eval.freq
        self.checkpoint_every = spec.checkpoint.interval * CHECKPOINT_UNIT
        self.next_eval = self.eval_every
        self.next_checkpoint = self.checkpoint_every

    def start_at(self, timesteps: int) -> None:
        """Schedule the next evaluation and checkpoint after `timesteps` (a resumed run)."""
        self.next_eval = next_multiple(timesteps, self.eval_every)
        self.next_checkpoint = next_multiple(timesteps, self.checkpoint_every)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # At a rollout's end every transition of it is stored (on_step runs before SB3 adds
        # the step to the replay buffer), so a checkpoint here loses none.
        self.logger.record("progress", self.progress)
        now = self.num_timesteps
        evaluate, checkpoint = now >= self.next_eval, now >= self.next_checkpoint
        if evaluate:
            self.next_eval = next_multiple(now, self.eval_every)
        if checkpoint:
            self.next_checkpoint = next_multiple(now, self.checkpoint_every)
        if now >= self.spec.total_timesteps:
            return
        if evaluate:
            self.evaluate_and_save()
        elif checkpoint:
            self.checkpointer.save(now, agent_state(self.model, self.envs))

    @property
    def progress(self) -> float:
        """Percent of totalTimesteps done."""
        return 100.0 * self.num_timesteps / self.spec.total_timesteps

    def evaluate_and_save(self) -> float:
        """Evaluate on the validation market, log and checkpoint ranked by the result."""
        mean = evaluation_reward(self.model, self.envs, self.spec)
        values = {"eval_mean_reward": mean, "timesteps": self.num_timesteps}
        self.tracker.metrics(values | {"progress": self.progress}, step=self.num_timesteps)
        self.checkpointer.save(self.num_timesteps, agent_state(self.model, self.envs), mean, "max")
        return mean


def evaluation_reward(model: BaseAlgorithm, envs: AgentEnvs, spec: RLRunSpec) -> float:
    """SB3's evaluate_policy on the evaluation (validation) env: mean reward of
    `eval.episodes` episodes."""
    sync_normalization(envs)
    # no Monitor needed: every step's reward reaches evaluate_policy, so episodes are exact
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Evaluation environment is not wrapped")
        rewards, _ = evaluate_policy(
            model,
            envs.evaluation,
            n_eval_episodes=spec.eval.episodes,
            deterministic=spec.eval.deterministic,
            return_episode_rewards=True,
        )
    return float(np.mean(rewards))


def agent_state(model: BaseAlgorithm, envs: AgentEnvs) -> dict[str, Any]:
    """Everything a resumed agent needs, as tensors and numbers (`rl.state.agent_tensors`:
    networks and optimisers, SB3's counters, the replay buffer, the VecNormalize
    statistics), the timestep count and the RNG states."""
    return {
        **agent_tensors(model, envs.train),
        "timesteps": int(model.num_timesteps),
        "rng": rng_state(),
    }


def restore_agent(
    agent: AgentSpec, state: dict[str, Any], envs: AgentEnvs, device: str, seed: int
) -> BaseAlgorithm:
    """The agent built from its spec on `envs`, with the checkpointed state loaded into it
    (a checkpoint in the old pickled format is refused before anything of it is read)."""
    check_agent_format(state)
    model = build_agent(agent, envs.train, seed=seed, device=device)
    if isinstance(envs.train, VecNormalize):
        load_vecnormalize_tensors(envs.train, state)
    load_agent_tensors(model, state)
    if not isinstance(state.get("rng"), dict):
        raise AgentStateError("the checkpoint's RNG states are missing or not a mapping")
    try:
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise AgentStateError(f"the checkpoint's RNG states are unreadable: {err!r}") from err
    return model


def train_agent(
    spec: RLRunSpec, agent: AgentSpec, markets: Markets, checkpointer: Checkpointer,
    tracker: Tracker, seed: int, device: str = "cpu", progress_bar: bool = False,
) -> tuple[BaseAlgorithm, AgentEnvs]:  # fmt: skip
    """Train (or resume) one agent to spec.totalTimesteps on the training market, evaluating
    on the validation market, in its action space; returns the final model."""
    spec = spec.for_agent(agent)
    envs = make_envs(spec, markets.train, markets.validation, seed=seed)
    state = checkpointer.resume(spec.checkpoint.resume_from)
    if state is not None:
        try:
            model = restore_agent(agent, state, envs, device, seed)
        except CheckpointError as err:  # say which checkpoint
            where = checkpointer.loaded_uri or checkpointer.store.uri("")
            raise type(err)(f"agent {agent.name}: {where}: {err}") from err
        log.info("agent %s resumed at %d timesteps", agent.name, model.num_timesteps)
    else:
        model = build_agent(agent, envs.train, seed=seed, device=device)
    model.set_logger(Logger(folder=None, output_formats=[TrackerOutput(tracker)]))
    space = model.observation_space
    # the policy's graph, before it first learns
    if model.num_timesteps == 0 and space.shape and tracker.tensorboard_dir is not None:
        # traced on a blank observation: resetting the env for one would move its seeds
        # and VecNormalize's statistics
        example, _ = model.policy.obs_to_tensor(np.zeros((1, *space.shape), space.dtype))
        policy = model.policy
        tracker.graph(policy, example, lambda obs: policy(obs, deterministic=True))
    callback = EvalCheckpointCallback(spec, envs, checkpointer, tracker)
    callback.start_at(model.num_timesteps)
    remaining = spec.total_timesteps - model.num_timesteps
    # unset: each algorithm's learn() default
    interval: dict[str, Any] = {"log_interval": agent.log_interval} if agent.log_interval else {}
    if remaining > 0:
        # the finiteness check first: it stops a diverged agent before anything checkpoints it
        model.learn(
            remaining,
            callback=[FiniteTrainingCheck(), callback],
            reset_num_timesteps=False,
            progress_bar=progress_bar,
            **interval,
        )
        callback.evaluate_and_save()
    return model, envs
