"""BatchedTradingEnv: N TradingEnvironments stepped together with array math.

The semantics are those of `TradingEnvironment` (timing, accounting, rewards, spaces: see
`tradewind.trainer.rl.env`; a step's action fills at the next bar's fill price, its close or
open as `data.execution` says), computed for all environments at once: per-environment state
is a row of (N,) and (N, S) arrays, every sum over symbols is a sequential `cumsum` (the
order of the single environment's loop) and every elementwise operation is the single
environment's, so results are bit-for-bit the same. Environment i seeded with s + i draws
its episode starts from the same generator as `TradingEnvironment(seed=s + i)`.

Only two things loop in Python over environments: building the `infos` list of dicts
(SB3's VecEnv contract: one fresh dict per environment) and drawing the start bar of the
environments that reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any, Literal

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.execution import cost_rate
from tradewind.trainer.rl.env import (
    FLAT_TOLERANCE,
    LOG_FLOOR,
    MarketArrays,
    action_space_of,
    observation_space_of,
)
from tradewind.trainer.rl.market import Market

FloatArray = npt.NDArray[np.float64]
_COLUMN_LOOP_LIMIT = 16
"""Up to this many symbols, sums over symbols loop over columns (faster than cumsum)."""
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
InfoMode = Literal["episode_end", "full"]
TIME_LIMIT = "TimeLimit.truncated"
_NOT_TRUNCATED: dict[str, Any] = {TIME_LIMIT: False}


def _sum_left_to_right(values: FloatArray) -> FloatArray:
    """Sum over the last axis, adding left to right as the single environment's loop does
    (a loop over the columns for a few symbols, else cumsum: the same additions either way).
    """
    if values.shape[-1] > _COLUMN_LOOP_LIMIT:
        total: FloatArray = np.cumsum(values, axis=-1)[..., -1]
        return total
    total = values[..., 0].copy()
    for column in range(1, values.shape[-1]):
        total += values[..., column]
    return total


class _BatchRewards:
    """The rewards of N environments from their step returns (see `env._RewardState`)."""

    def __init__(self, spec: EnvironmentSpec, n_envs: int) -> None:
        self.kind, self.window = spec.reward, spec.reward_window
        self.eta = 1.0 / spec.reward_window
        self.rows = np.arange(n_envs)
        self.count = np.zeros(n_envs, dtype=np.int64)
        self.ring = np.zeros((n_envs, self.window))
        self.total, self.squares, self.downside = (np.zeros(n_envs) for _ in range(3))
        self.negatives = np.zeros(n_envs, dtype=np.int64)
        self.mean_ema, self.square_ema = np.zeros(n_envs), np.zeros(n_envs)

    def reset(self, envs: IntArray) -> None:
        """Forget the episode's returns of `envs`."""
        for state in (self.count, self.total, self.squares, self.downside, self.negatives):
            state[envs] = 0
        self.mean_ema[envs] = 0.0
        self.square_ema[envs] = 0.0

    def __call__(self, step_return: FloatArray, growth: FloatArray) -> FloatArray:
        if self.kind == "returns":
            return step_return.copy()
        if self.kind == "log_returns":
            logs: FloatArray = np.log(np.maximum(growth, LOG_FLOOR))
            return logs
        if self.kind == "differential_sharpe":
            return self._differential_sharpe(step_return)
        return self._rolling_ratio(step_return)

    def _rolling_ratio(self, value: FloatArray) -> FloatArray:
        slot = self.count % self.window
        old = np.where(self.count >= self.window, self.ring[self.rows, slot], 0.0)
        old_negative = old < 0.0
        self.total = self.total - old
        self.squares = self.squares - old * old
        self.downside = self.downside - np.where(old_negative, old * old, 0.0)
        self.negatives -= old_negative
        self.ring[self.rows, slot] = value
        negative = value < 0.0
        self.total = self.total + value
        self.squares = self.squares + value * value
        self.downside = self.downside + np.where(negative, value * value, 0.0)
        self.negatives += negative
        self.count += 1
        n = np.minimum(self.count, self.window)
        mean = self.total / n
        if self.kind == "sortino":
            down = self.downside / n
            defined = (self.negatives > 0) & (down > 0.0)
            ratio: FloatArray = np.where(defined, mean / np.sqrt(np.where(defined, down, 1.0)), 0.0)
            return ratio
        mean_square = self.squares / n
        variance = mean_square - mean * mean
        defined = variance > FLAT_TOLERANCE * mean_square
        sharpe: FloatArray = np.where(
            defined, mean / np.sqrt(np.where(defined, variance, 1.0)), 0.0
        )
        return sharpe

    def _differential_sharpe(self, value: FloatArray) -> FloatArray:
        a, b = self.mean_ema, self.square_ema
        delta_a, delta_b = value - a, value * value - b
        variance = b - a * a
        defined = variance > FLAT_TOLERANCE * b
        safe = np.where(defined, variance, 1.0)
        ratio: FloatArray = np.where(
            defined, (b * delta_a - 0.5 * a * delta_b) / (safe * np.sqrt(safe)), 0.0
        )
        self.mean_ema = a + self.eta * delta_a
        self.square_ema = b + self.eta * delta_b
        return ratio


class BatchedTradingEnv(VecEnv):
    """`n_envs` TradingEnvironments over one `market`, as one SB3 VecEnv.

    Same observation and action spaces as `TradingEnvironment`; autoreset as SB3 expects
    (a finished environment's last observation is `infos[i]["terminal_observation"]`, the
    returned one starts its next episode; `infos[i]["TimeLimit.truncated"]` on every step).
    `seed` seeds environment i with seed + i (`seed()` re-seeds them at the next reset);
    `random_start` overrides `spec.randomStart`. Observations are fresh arrays every step.

    Infos: every `infos[i]` is a fresh dict with what SB3 reads (TimeLimit.truncated, and
    terminal_observation when the episode ends). What `TradingEnvironment` puts in its info
    (portfolio_value, positions, costs, turnover, step) is in `last_step` for every
    environment as (N,) and (N, S) arrays, and in the dicts:
    - `infos="episode_end"` (default): in the infos of the environments whose episode ended
      this step (its final portfolio), not in the others. Building N dicts of portfolio
      numbers would cost more than the whole step at large N;
    - `infos="full"`: in every environment's info at every step, as `TradingEnvironment`
      gives them (step-for-step the same infos as N single environments).
    The environments share their attributes: `get_attr`/`set_attr`/`env_method` act on
    this object, once per requested index."""

    def __init__(
        self,
        market: Market,
        spec: EnvironmentSpec,
        n_envs: int,
        seed: int | None = None,
        random_start: bool | None = None,
        infos: InfoMode = "episode_end",
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be at least 1, got {n_envs}")
        self.market, self.env_spec = market, spec
        self.arrays = MarketArrays.build(market, spec)
        self.random_start = spec.random_start if random_start is None else random_start
        self.render_mode = None
        super().__init__(
            n_envs, observation_space_of(self.arrays), action_space_of(spec, market.num_symbols)
        )
        self._windows = self.arrays.windows()
        self._generators = [
            seeding.np_random(None if seed is None else seed + i)[0] for i in range(n_envs)
        ]
        self._powers = 3 ** np.arange(market.num_symbols, dtype=np.int64)
        self._cost_rate = cost_rate(spec.transaction_cost, spec.slippage)
        self._rewards = _BatchRewards(spec, n_envs)
        self._bar = np.full(n_envs, self.arrays.first_bar, dtype=np.int64)
        self._steps = np.zeros(n_envs, dtype=np.int64)
        self._value = np.full(n_envs, spec.initial_balance)
        self._weights = np.zeros((n_envs, market.num_symbols))
        self._actions: npt.NDArray[Any] | None = None
        if infos not in ("episode_end", "full"):
            raise ValueError(f"infos must be 'episode_end' or 'full', got {infos!r}")
        self.info_mode: InfoMode = infos
        self.last_step: dict[str, npt.NDArray[Any]] = {}
        """The last step of every environment, as arrays keyed like the infos: portfolio_value
        (N,), positions (N, S), costs (N,), turnover (N,), step (N,) (before any autoreset)."""

    @property
    def bars(self) -> IntArray:
        """The bar (index into the market) each environment is at (a copy)."""
        return self._bar.copy()

    def reset(self) -> npt.NDArray[np.float32]:
        """Start an episode in every environment (with the seeds of `seed()`, if set)."""
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self._generators[i] = seeding.np_random(seed)[0]
        self._reset_seeds()
        self._reset_options()
        everyone = np.arange(self.num_envs)
        self._start_episodes(everyone)
        self._actions = None
        return self._observe()

    def step_async(self, actions: npt.NDArray[Any]) -> None:
        """Remember the actions of every environment for `step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every environment, then reset those whose episode ended."""
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async() (or reset() in between)")
        targets = self._targets(self._actions)
        self._actions = None
        rewards, terminated, costs, turnover = self._advance(targets)
        truncated = self._steps >= self.env_spec.episode_length
        observations = self._observe()
        dones = terminated | truncated
        self.last_step = {
            "portfolio_value": self._value,
            "positions": self._weights,
            "costs": costs,
            "turnover": turnover,
            "step": self._steps,
        }  # arrays made this step: autoreset replaces them rather than writing into them
        finished = np.flatnonzero(dones)
        infos = self._infos(truncated & ~terminated, finished)
        if finished.size:
            for i in finished.tolist():
                infos[i]["terminal_observation"] = observations[i].copy()
            self._start_episodes(finished)
            observations[finished] = self._observe(finished)
        return observations, rewards, dones, infos

    def _infos(self, time_limit: BoolArray, finished: IntArray) -> list[dict[str, Any]]:
        """One fresh dict per environment: the loop over environments SB3's VecEnv API needs
        (see the class docstring for what they hold)."""
        if self.info_mode == "full":
            return self._full_infos(time_limit)
        # dict.copy mapped in C: the cheapest way to N fresh dicts
        infos: list[dict[str, Any]] = list(map(dict.copy, repeat(_NOT_TRUNCATED, self.num_envs)))
        if time_limit.any():
            for i in np.flatnonzero(time_limit).tolist():
                infos[i][TIME_LIMIT] = True
        if finished.size:
            record = self.last_step
            for i in finished.tolist():
                infos[i].update(
                    portfolio_value=float(record["portfolio_value"][i]),
                    positions=tuple(record["positions"][i].tolist()),
                    costs=float(record["costs"][i]),
                    turnover=float(record["turnover"][i]),
                    step=int(record["step"][i]),
                )
        return infos

    def _full_infos(self, time_limit: BoolArray) -> list[dict[str, Any]]:
        record = self.last_step
        return [
            {
                "portfolio_value": value,
                "positions": positions,
                "costs": cost,
                "turnover": traded,
                "step": step,
                TIME_LIMIT: truncated,
            }
            for value, positions, cost, traded, step, truncated in zip(
                record["portfolio_value"].tolist(),
                zip(*record["positions"].T.tolist(), strict=True),  # a tuple per environment
                record["costs"].tolist(),
                record["turnover"].tolist(),
                record["step"].tolist(),
                time_limit.tolist(),
                strict=False,  # all of length n_envs
            )
        ]

    def close(self) -> None:
        """Nothing to release: the environments are arrays in this process."""

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed environment i with seed + i at the next reset (SB3's convention)."""
        return super().seed(seed)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The (shared) attribute, once per requested environment."""
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a shared attribute; it must be set for every environment at once."""
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError("BatchedTradingEnv attributes are shared: set them for all envs")
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of this object once per requested environment."""
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self,
        wrapper_class: type[gymnasium.Wrapper[Any, Any, Any, Any]],
        indices: VecEnvIndices = None,
    ) -> list[bool]:
        """No environment is wrapped."""
        return [False for _ in self._get_indices(indices)]

    def _targets(self, actions: npt.NDArray[Any]) -> FloatArray:
        n_envs, n_symbols = self.num_envs, self.arrays.n_symbols
        limit = self.env_spec.max_position_size
        if self.env_spec.action_space == "discrete":
            codes = actions.astype(np.int64).reshape(n_envs)
            if codes.min() < 0 or codes.max() >= 3**n_symbols:
                raise ValueError(f"discrete actions must be in [0, {3**n_symbols})")
            digits = (codes[:, None] // self._powers) % 3
            targets: FloatArray = (digits - 1).astype(np.float64) * limit
            return targets
        values = actions.astype(np.float64).reshape(n_envs, n_symbols)
        clipped: FloatArray = np.clip(values, -1.0, 1.0) * limit
        return clipped

    def _advance(self, targets: FloatArray) -> tuple[FloatArray, BoolArray, FloatArray, FloatArray]:
        """One step of every environment (see `TradingEnvironment.step`): rewards, bankrupt,
        costs, turnover; the state moves to the next bar."""
        bar = self._bar + 1
        returns = np.take(self.arrays.returns, bar, axis=0)  # bar t -> t+1 (np.take: fast)
        gross = np.take(self.arrays.gross, bar, axis=0)
        growth = 1.0 + _sum_left_to_right(self._weights * returns)
        alive = growth > 0.0
        all_alive = bool(alive.all())
        divisor = growth if all_alive else np.where(alive, growth, 1.0)
        drifted = self._weights * gross / divisor[:, None]
        turnover = _sum_left_to_right(np.abs(targets - drifted))
        if not all_alive:
            turnover = np.where(alive, turnover, 0.0)
        cost_fraction = self._cost_rate * turnover
        step_growth = growth * (1.0 - cost_fraction)
        costs = self._value * growth * cost_fraction
        bankrupt = ~(step_growth > 0.0)
        if bankrupt.any():
            step_growth = np.where(bankrupt, 0.0, step_growth)
            step_return = np.where(bankrupt, -1.0, step_growth - 1.0)
            targets = np.where(bankrupt[:, None], 0.0, targets)
        else:
            step_return = step_growth - 1.0
        self._value = self._value * step_growth
        self._weights = targets
        self._bar = bar
        self._steps = self._steps + 1
        return self._rewards(step_return, step_growth), bankrupt, costs, turnover

    def _start_episodes(self, envs: IntArray) -> None:
        """Put `envs` at the start of a new episode and record their reset infos."""
        offsets = np.zeros(len(envs), dtype=np.int64)
        if self.random_start:
            offsets[:] = [int(self._generators[i].integers(0, self.arrays.n_starts)) for i in envs]
        self._bar[envs] = self.arrays.first_bar + offsets
        # New arrays, not writes into the old ones: `last_step` and infos may hold them.
        self._steps, self._value = self._steps.copy(), self._value.copy()
        self._weights = self._weights.copy()
        self._steps[envs] = 0
        self._value[envs] = self.env_spec.initial_balance
        self._weights[envs] = 0.0
        self._rewards.reset(envs)
        flat = (0.0,) * self.arrays.n_symbols
        for i in envs.tolist():
            self.reset_infos[i] = {
                "portfolio_value": self.env_spec.initial_balance,
                "positions": flat,
                "costs": 0.0,
                "turnover": 0.0,
                "step": 0,
            }

    def _observe(self, envs: IntArray | None = None) -> npt.NDArray[np.float32]:
        """Fresh (n, observation_size) observations of `envs` (default: all)."""
        bars = self._bar if envs is None else self._bar[envs]
        observations: npt.NDArray[np.float32] = self._windows[bars - self.arrays.first_bar]
        # The window view's last S values belong to the next bar: overwrite them.
        weights = self._weights if envs is None else self._weights[envs]
        observations[:, self.arrays.window_size :] = weights
        return observations
