"""`tw_example.drawdown_penalty`: Tradewind's portfolio environment whose reward pays for the
episode's drawdown. Only the reward changes: fills, costs and the portfolio's returns stay
Tradewind's (the contract of an extension's environment, docs/extensions.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tradewind.api.rl import EnvironmentSpec
from tradewind.extensions import environment
from tradewind.trainer.rl import Market, TradingEnvironment


class DrawdownPenaltyParams(BaseModel):
    """`environment.params` of tw_example.drawdown_penalty."""

    model_config = ConfigDict(extra="forbid")
    penalty: float = Field(default=1.0, ge=0, le=1000)
    """Reward minus penalty x drawdown (1 - equity / the episode's highest equity)."""


class DrawdownPenalty(TradingEnvironment):
    """The built-in reward (`environment.reward`) minus `penalty` x the current drawdown."""

    def __init__(
        self,
        market: Market,
        spec: EnvironmentSpec,
        seed: int | None,
        random_start: bool | None,
        penalty: float,
    ) -> None:
        super().__init__(market, spec, seed=seed, random_start=random_start)
        self.penalty = penalty
        self.peak = spec.initial_balance

    def shape_observation(self, observation: Any, info: dict[str, Any]) -> Any:
        if info["step"] == 0:  # a new episode
            self.peak = info["portfolio_value"]
        return observation

    def shape_reward(self, reward: float, info: dict[str, Any]) -> float:
        value = info["portfolio_value"]
        self.peak = max(self.peak, value)
        drawdown = 1.0 - value / self.peak if self.peak > 0 else 1.0
        return reward - self.penalty * drawdown


@environment(params=DrawdownPenaltyParams)
def drawdown_penalty(
    *,
    market: Market,
    spec: EnvironmentSpec,
    seed: int | None,
    random_start: bool | None,
    params: DrawdownPenaltyParams,
) -> DrawdownPenalty:
    return DrawdownPenalty(market, spec, seed, random_start, params.penalty)
