"""Reinforcement learning on markets: the data as arrays, one gymnasium trading environment
and a batched SB3 vector environment with the same semantics.

`load_market(EnvironmentSpec, seed)` -> (train, eval) `Market`s; `TradingEnvironment`
(gymnasium.Env) and `BatchedTradingEnv` (stable_baselines3 VecEnv) trade them. Timing,
accounting, spaces and rewards are documented in `tradewind.trainer.rl.env`.
"""

from tradewind.trainer.rl.env import (
    MAX_DISCRETE_SYMBOLS,
    MarketArrays,
    TradingEnvironment,
    action_space_of,
    discrete_targets,
    observation_space_of,
)
from tradewind.trainer.rl.market import (
    Market,
    align_feature_table,
    load_market,
    required_bars,
    split_market,
)
from tradewind.trainer.rl.vec_env import BatchedTradingEnv

__all__ = [
    "MAX_DISCRETE_SYMBOLS",
    "BatchedTradingEnv",
    "Market",
    "MarketArrays",
    "TradingEnvironment",
    "action_space_of",
    "align_feature_table",
    "discrete_targets",
    "load_market",
    "observation_space_of",
    "required_bars",
    "split_market",
]
