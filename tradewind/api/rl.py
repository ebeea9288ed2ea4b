"""RLRun: reinforcement-learning agents (stable-baselines3) on a trading environment."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from tradewind.api.base import ApiModel, CelRule, DNSLabel, immutable
from tradewind.api.common import DataSource, RunBase, builtin_or_extension, check_extension
from tradewind.api.hyperparameters import (
    hyperparameter_errors,
    hyperparameter_name_rules,
    hyperparameters_crd_schema,
)

Algorithm = Literal["ppo", "sac", "td3", "dqn", "a2c"]
CONTINUOUS_ONLY = ("sac", "td3")
DISCRETE_ONLY = ("dqn",)
BUILTIN_ENVIRONMENTS = ("portfolio",)
_ENVIRONMENT_CHECK, _ENVIRONMENT_SCHEMA = builtin_or_extension(BUILTIN_ENVIRONMENTS)
EnvironmentType = Annotated[
    str, Field(min_length=1, max_length=253), _ENVIRONMENT_CHECK, _ENVIRONMENT_SCHEMA
]
"""The built-in environment or an extension's, `<package>.<name>`."""


class EnvironmentSpec(ApiModel):
    """The trading environment: a multi-symbol portfolio over real or synthetic bars. The
    observation at bar t uses bars <= t; orders fill at bar t+1."""

    type: EnvironmentType = "portfolio"
    """`portfolio` (the built-in environment) or an extension's environment,
    `<package>.<name>` (entry point group `tradewind.environments`): Tradewind's portfolio
    environment with the extension's reward and observation; its accounting (fills at the
    next bar, costs, per-step returns and turnover) stays Tradewind's."""
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    """Parameters of an extension's environment, checked by the parameters model it declares
    where its package is installed (the trainer, `tradewind validate`); empty for
    `portfolio`."""
    data: DataSource = Field(default_factory=DataSource)
    """Market data and features."""
    initial_balance: float = Field(default=100_000.0, gt=0, le=1e15)
    """Starting cash."""
    transaction_cost: float = Field(default=0.001, ge=0, le=0.1)
    """Proportional cost per unit of traded value."""
    slippage: float = Field(default=0.0, ge=0, le=0.1)
    """Proportional adverse price move on each fill."""
    max_position_size: float = Field(default=1.0, gt=0, le=10)
    """Largest absolute weight of one symbol in the portfolio (1.0 = all equity)."""
    lookback_window: int = Field(default=30, ge=1, le=4096)
    """Bars of engineered features in each observation."""
    reward: Literal["returns", "log_returns", "sharpe", "sortino", "differential_sharpe"] = (
        "log_returns"
    )
    """Reward per step: portfolio return, log return, rolling Sharpe or Sortino ratio, or the
    differential Sharpe ratio (Moody & Saffell)."""
    reward_window: int = Field(default=20, ge=2, le=10_000)
    """Bars in the rolling window of the sharpe and sortino rewards."""
    action_space: Literal["discrete", "continuous"] = "discrete"
    """`discrete`: short/flat/long per symbol; `continuous`: target weight per symbol."""
    episode_length: int = Field(default=252, ge=2, le=10_000_000)
    """Steps per episode (episodes start at random bars)."""
    random_start: bool = True
    """Start each training episode at a random bar."""

    def check_semantics(self) -> None:
        # not CEL: the apiserver's CEL does not see inside a free-form object
        if self.params and self.type in BUILTIN_ENVIRONMENTS:
            raise PydanticCustomError(
                "extension",
                "{message}",
                {
                    "message": "params are for an extension's environment (type "
                    f"<package>.<name>); {self.type} takes none: set its fields instead",
                    "field_path": ".params",
                },
            )

    @model_validator(mode="after")
    def _check_extension(self, info: ValidationInfo) -> EnvironmentSpec:
        check_extension(info, "environment", self.type, ".type", self.params)
        return self


class AgentSpec(ApiModel):
    """One agent; several agents form an ensemble."""

    name: DNSLabel
    """Agent name, unique in the run (used in metric names and checkpoint paths)."""
    algorithm: Algorithm
    """stable-baselines3 algorithm: ppo, a2c (any action space), sac, td3 (continuous), dqn
    (discrete)."""
    policy: Literal["MlpPolicy"] = "MlpPolicy"
    """Policy network class."""
    hyperparameters: Annotated[dict[str, Any], WithJsonSchema(hyperparameters_crd_schema())] = (
        Field(default_factory=dict, max_length=32)
    )
    """SB3 constructor arguments with rl-zoo3 names (learning_rate, n_steps, batch_size,
    gamma, buffer_size, tau, ...) plus net_arch and activation_fn; unset ones take SB3's
    defaults."""
    weight: float = Field(default=1.0, ge=0, le=1000)
    """Weight in a weighted_average ensemble."""
    action_space: Literal["discrete", "continuous"] | None = None
    """This agent's action space, where it differs from `environment.actionSpace` (unset:
    the environment's): an ensemble may mix dqn with sac or td3. It trains and is reported
    in that space; the ensemble combines every member's target weights and acts in the
    members' common space, or continuous when they differ."""
    log_interval: int | None = Field(default=None, ge=1, le=1_000_000)
    """SB3's `learn(log_interval)`: its metrics (`train_*`, `rollout_*`, `time_*`) and
    `progress` go to MLflow every this many episodes (sac, td3, dqn) or iterations (ppo,
    a2c); unset: SB3's default for the algorithm (4 episodes; 1 iteration for ppo, 100 for
    a2c). Evaluations (`eval.freq`) are logged when they happen."""

    cel_rules = (
        CelRule(
            "self.name != 'ensemble'",
            "agent name 'ensemble' is taken by the ensemble's own metrics (ensemble_sharpe, ...)",
            ".name",
        ),
        *(
            CelRule(rule, message, ".hyperparameters")
            for rule, message in hyperparameter_name_rules()
        ),
    )

    def check_semantics(self) -> None:
        errors = hyperparameter_errors(self.algorithm, self.hyperparameters)
        if errors:
            key, problem = errors[0]
            raise PydanticCustomError(
                "hyperparameter",
                "{message}",
                {"message": problem, "field_path": f".hyperparameters.{key}"},
            )


class ReweightingSpec(ApiModel):
    """Online re-weighting of the members (the ensemble's meta-learning) while it trades.

    A member's performance is the return its own target weights would have earned, after
    the cost of its own turnover, over the last `performanceWindow` bars that have closed
    (never the bar being decided). Every `frequency` such bars the weights move a step
    toward shares proportional to exp(t) of each member's t-statistic of those returns
    (mean / standard error; 0 while it has fewer than two or they are flat):
    weights <- (1 - adaptationRate) x weights + adaptationRate x target. The weights start
    at the agents' `weight`s (as shares)."""

    frequency: int = Field(default=21, ge=1, le=100_000)
    """Re-weight every this many closed bars."""
    adaptation_rate: float = Field(default=0.1, gt=0, le=1)
    """Fraction of the way from the current weights to the performance target taken at each
    re-weighting (1 = jump to the target)."""


class EnsembleSpec(ApiModel):
    """Combine the agents' actions into one policy."""

    method: Literal["weighted_average", "majority", "thompson_sampling", "combined"] = (
        "weighted_average"
    )
    """weighted_average of target weights by the agents' `weight` (or the re-weighted
    weights), majority vote, Thompson sampling (each step, the agent whose win rate drawn
    from its Beta belief over its last `performanceWindow` closed bars is highest acts
    alone), or combined: a weighted average whose shares are proportional to weight x a win
    rate drawn per agent from the same Beta beliefs (weighted average and Thompson sampling
    together; with `uncertaintyScaling` all three)."""
    uncertainty: bool = True
    """Report the spread of the members' actions as an uncertainty estimate."""
    performance_window: int = Field(default=63, ge=2, le=100_000)
    """Closed bars of each member's recent returns behind thompson_sampling, combined and
    re-weighting."""
    reweighting: ReweightingSpec | None = None
    """Move the weights toward the members' recent performance as the ensemble trades
    (weighted_average and combined); unset keeps the agents' static weights."""
    uncertainty_scaling: float = Field(default=0.0, ge=0, le=1000)
    """k: scale the ensemble's target weight of each symbol by 1 / (1 + k x d), where d is the
    members' disagreement on it (the standard deviation of their target weights, each in
    [-1, 1]): exposure shrinks as members disagree and is untouched when they agree. 0 turns
    it off. With a discrete action space the scaled weight is then rounded, so a symbol goes
    flat once the factor falls below one half."""

    cel_rules = (
        CelRule(
            "!has(self.reweighting) || self.method in ['weighted_average', 'combined']",
            "reweighting needs method weighted_average or combined",
            ".reweighting",
        ),
    )


class EvalSpec(ApiModel):
    """Periodic evaluation on the validation bars, where the best model is chosen; the test
    bars after them are held out from every choice and read only by the final report."""

    freq: int = Field(default=10_000, ge=1)
    """Evaluate every this many timesteps."""
    episodes: int = Field(default=5, ge=1, le=1000)
    """Episodes per evaluation."""
    deterministic: bool = True
    """Use deterministic actions when evaluating."""
    split: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of the bars, just before the test bars, held out for validation: periodic
    evaluation, the choice of the best checkpoint and `tradewind rl grid-search`'s ranking
    read them."""
    test: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of the last bars held out for the final test: only the report of each agent,
    the ensemble and buy-and-hold (the combine step, `test_*` metrics) reads them."""

    cel_rules = (
        CelRule(
            "self.split + self.test <= 0.8",
            "split + test must leave at least 20% of the bars for training",
        ),
    )


class RLRunSpec(RunBase):
    """A reinforcement-learning run: environment, agents, optional ensemble."""

    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    """The trading environment."""
    agents: list[AgentSpec] = Field(min_length=1, max_length=8)
    """Agents to train; with more than one, each trains in its own pod in parallel."""
    ensemble: EnsembleSpec | None = None
    """Combine the agents after training (needs two or more agents)."""
    total_timesteps: int = Field(default=100_000, ge=1, le=10_000_000_000)
    """Environment steps per agent."""
    n_envs: int = Field(default=8, ge=1, le=4096)
    """Parallel environments per agent (one batched vector environment)."""
    normalize: bool = True
    """Wrap the environment in VecNormalize (observations and rewards)."""
    eval: EvalSpec = Field(default_factory=EvalSpec)
    """Evaluation."""

    def for_agent(self, agent: AgentSpec) -> RLRunSpec:
        """The spec as `agent` trains and is reported: its environment in the agent's action
        space."""
        return self._in_space(agent.action_space or self.environment.action_space)

    def for_ensemble(self) -> RLRunSpec:
        """The spec as the ensemble acts: the agents' common action space, or continuous
        when they differ (a discrete member's short/flat/long is a target weight of -1, 0
        or +1)."""
        spaces = {a.action_space or self.environment.action_space for a in self.agents}
        return self._in_space(spaces.pop() if len(spaces) == 1 else "continuous")

    def _in_space(self, space: str) -> RLRunSpec:
        if space == self.environment.action_space:
            return self
        environment = self.environment.model_copy(update={"action_space": space})
        return self.model_copy(update={"environment": environment})

    cel_rules = (
        *immutable("environment", "agents", "device", "managedBy"),
        CelRule(
            "self.agents.all(a, self.agents.exists_one(b, b.name == a.name))",
            "agent names must be unique",
            ".agents",
        ),
        CelRule(
            "self.agents.all(a, !(a.algorithm in ['sac', 'td3']) || "
            "(has(a.actionSpace) ? a.actionSpace == 'continuous' : "
            "self.environment.actionSpace == 'continuous'))",
            "sac and td3 need a continuous action space: environment.actionSpace continuous, "
            "or the agent's actionSpace",
            ".agents",
        ),
        CelRule(
            "self.agents.all(a, a.algorithm != 'dqn' || "
            "(has(a.actionSpace) ? a.actionSpace == 'discrete' : "
            "self.environment.actionSpace == 'discrete'))",
            "dqn needs a discrete action space: environment.actionSpace discrete, or the "
            "agent's actionSpace",
            ".agents",
        ),
        CelRule(
            "!has(self.ensemble) || size(self.agents) >= 2",
            "an ensemble needs at least two agents",
            ".ensemble",
        ),
    )
