"""TradingEnvironment: a multi-symbol portfolio over a `Market`, as one gymnasium env.

Timing (no look-ahead). Prices are the market's fill prices (`Market.prices`): the close
or the open of each bar, as `data.execution` says (`tradewind.trainer.execution`). The
environment is at bar t when the agent observes it: the observation holds the features of
bars t-L+1..t (L = lookbackWindow; features of bar t use bars <= t) and the portfolio
weights held from the fill at bar t. `step(action)` then
1. lets the held weights earn the fill-to-fill return of bar t -> t+1 (weights drift with
   the prices);
2. fills the action at the fill price (close or open, `data.execution`) of bar t+1: the
   weights are rebalanced to the action's targets, paying `cost_rate` (transactionCost +
   slippage) x traded value, where traded value = equity x sum_i |target_i -
   drifted_weight_i| (both at the fill price of bar t+1);
3. moves to bar t+1 and observes it.
So the action chosen after observing bar t is executed at bar t+1 (`next_close`: its close;
`next_open`: its open), and the return of bar t+1 -> t+2 accrues to the new position (in
the next step's reward). Nothing of step t depends on a price after bar t+1.

Accounting per step (w = held weights, r = fill-price returns of bar t -> t+1, g = target
weights, c = transactionCost + slippage, V = equity):
    growth = 1 + sum_i w_i r_i               equity after the price move, over V
    w'_i   = w_i (1 + r_i) / growth          drifted weights
    turnover = sum_i |g_i - w'_i|
    G      = growth x (1 - c x turnover)     equity after costs, over V
    V     <- V x G;  costs = V x growth x c x turnover;  weights <- g
The targets are fractions of the equity after costs (the cost is taken from every position
pro rata, a second-order trade that is not charged again). A weight w_i < 0 is a short
(it earns -r_i); cash is 1 - sum_i w_i and earns nothing. When G <= 0 the portfolio is
bankrupt: equity 0, weights 0, step return -1, and the episode terminates.

Actions: `continuous` = Box(-1, 1, (S,)), target weight a_i x maxPositionSize (clipped to
[-1, 1] first); `discrete` = Discrete(3**S), action = sum_i d_i 3**i with digit d_i in
{0: short, 1: flat, 2: long} for symbol i (symbol 0 the least significant digit), target
(d_i - 1) x maxPositionSize. So |weight| <= maxPositionSize per symbol; the gross exposure
can reach S x maxPositionSize (use maxPositionSize <= 1/S for no leverage).

Rewards (step return R = G - 1): returns R; log_returns log G; sharpe mean/std (population)
and sortino mean/sqrt(mean(min(R, 0)^2)) of the episode's last min(k, rewardWindow) step
returns, 0 while the window is flat (variance <= 1e-12 x mean square) or has no negative
return; differential_sharpe (Moody & Saffell 1998) with eta = 1/rewardWindow, A_0 = B_0 = 0
at reset: D = (B dA - A dB / 2) / (B - A^2)^(3/2), 0 while B - A^2 <= 1e-12 x B (it is
large in the first steps of an episode, while A and B warm up).

Episodes: `episodeLength` steps (then truncated), starting at bar L-1 or, with randomStart,
at a uniformly drawn bar that leaves room for the whole episode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.utils import seeding
from numpy.lib.stride_tricks import as_strided

from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.data import DataError
from tradewind.trainer.execution import cost_rate
from tradewind.trainer.rl.market import Market, required_bars

MAX_DISCRETE_SYMBOLS = 12
"""Discrete(3**S) grows fast: 12 symbols are already 531,441 actions."""
FLAT_TOLERANCE = 1e-12
"""A variance below this fraction of the mean square counts as zero (flat window)."""
LOG_FLOOR = 1e-12
"""log_returns of a bankrupt step is log(LOG_FLOOR), not -inf."""

Observation = npt.NDArray[np.float32]


@dataclass(frozen=True)
class MarketArrays:
    """What stepping needs from a Market, precomputed once (shared with the batched env)."""

    window_source: npt.NDArray[np.float32]
    """The features flattened (T*S*F) plus S zeros: the observation at bar t starts with
    `window_size` values at (t - L + 1) * row_size."""
    gross: npt.NDArray[np.float64]
    """(T, S) prices[t] / prices[t-1] of the fill prices; row 0 is 1."""
    returns: npt.NDArray[np.float64]
    """(T, S) gross - 1."""
    n_symbols: int
    row_size: int
    """S * F values per bar."""
    window_size: int
    """L * S * F feature values in an observation."""
    first_bar: int
    """L - 1, the first bar with a full window."""
    n_starts: int
    """Bars an episode may start at: first_bar .. first_bar + n_starts - 1."""

    @property
    def observation_size(self) -> int:
        """Window values plus one weight per symbol."""
        return self.window_size + self.n_symbols

    @classmethod
    def build(cls, market: Market, spec: EnvironmentSpec) -> MarketArrays:
        """Check that `market` fits an episode of `spec` and precompute its arrays."""
        if market.num_bars < required_bars(spec):
            raise DataError(
                f"the market has {market.num_bars} bars; an episode needs lookbackWindow + "
                f"episodeLength = {required_bars(spec)}"
            )
        n_symbols, row_size = market.num_symbols, market.num_symbols * market.num_features
        if spec.action_space == "discrete" and n_symbols > MAX_DISCRETE_SYMBOLS:
            raise ValueError(
                f"actionSpace discrete supports at most {MAX_DISCRETE_SYMBOLS} symbols "
                f"(3**S actions); this market has {n_symbols}: use continuous"
            )
        source = np.zeros(market.features.size + n_symbols, dtype=np.float32)
        source[: market.features.size] = market.features.reshape(-1)
        source.flags.writeable = False
        gross = np.ones_like(market.prices)
        gross[1:] = market.prices[1:] / market.prices[:-1]
        gross.flags.writeable = False
        returns = gross - 1.0
        returns.flags.writeable = False
        return cls(
            window_source=source,
            gross=gross,
            returns=returns,
            n_symbols=n_symbols,
            row_size=row_size,
            window_size=spec.lookback_window * row_size,
            first_bar=spec.lookback_window - 1,
            n_starts=market.num_bars - required_bars(spec) + 1,
        )

    def windows(self) -> npt.NDArray[np.float32]:
        """Read-only (T - L + 1, observation_size) view: row t - L + 1 is the window of bar t
        followed by S values that the caller overwrites with the weights (they belong to the
        next bar, so they must never be returned). Nothing is copied."""
        n_windows = (len(self.window_source) - self.n_symbols) // self.row_size - self.first_bar
        itemsize = self.window_source.itemsize
        view: npt.NDArray[np.float32] = as_strided(
            self.window_source,
            shape=(n_windows, self.observation_size),
            strides=(self.row_size * itemsize, itemsize),
            writeable=False,
        )
        return view


def observation_space_of(arrays: MarketArrays) -> spaces.Box:
    """Box of the flattened window (bar, symbol, feature; oldest bar first) and weights."""
    return spaces.Box(-np.inf, np.inf, (arrays.observation_size,), np.float32)


def action_space_of(spec: EnvironmentSpec, n_symbols: int) -> spaces.Space[Any]:
    """Discrete(3**S) or Box(-1, 1, (S,)) (see the module docstring)."""
    if spec.action_space == "discrete":
        return spaces.Discrete(3**n_symbols)
    return spaces.Box(-1.0, 1.0, (n_symbols,), np.float32)


def discrete_targets(action: int, n_symbols: int, max_position: float) -> tuple[float, ...]:
    """Target weights of a discrete action: digit i (base 3) of `action` is symbol i's
    0 short / 1 flat / 2 long, scaled by `max_position`."""
    targets = []
    for _ in range(n_symbols):
        action, digit = divmod(action, 3)
        targets.append((digit - 1) * max_position)
    return tuple(targets)


Reward = Callable[[float, float], float]
"""reward(step_return, growth) of one step (growth = 1 + step_return)."""


def _returns(step_return: float, growth: float) -> float:
    return step_return


def _log_returns(step_return: float, growth: float) -> float:
    # numpy's array log, not math.log: the batched env's log is bit-for-bit the same
    return float(np.log(np.array(max(growth, LOG_FLOOR))))


def _rolling_ratio(window: int, sortino: bool) -> Reward:
    """Sharpe (or Sortino) of the last min(k, window) step returns, from running sums over a
    ring buffer: O(1) per step whatever the window."""
    ring = [0.0] * window
    count = negatives = 0
    total = squares = downside = 0.0

    def reward(value: float, growth: float) -> float:
        nonlocal count, negatives, total, squares, downside
        slot = count % window
        if count >= window:
            old = ring[slot]
            total -= old
            squares -= old * old
            if old < 0.0:
                downside -= old * old
                negatives -= 1
        ring[slot] = value
        total += value
        squares += value * value
        if value < 0.0:
            downside += value * value
            negatives += 1
        count += 1
        n = count if count < window else window
        mean = total / n
        if sortino:
            down = downside / n
            return mean / math.sqrt(down) if negatives > 0 and down > 0.0 else 0.0
        mean_square = squares / n
        variance = mean_square - mean * mean
        return mean / math.sqrt(variance) if variance > FLAT_TOLERANCE * mean_square else 0.0

    return reward


def _differential_sharpe(eta: float) -> Reward:
    """Moody & Saffell's differential Sharpe ratio, from A_0 = B_0 = 0."""
    a = b = 0.0

    def reward(value: float, growth: float) -> float:
        nonlocal a, b
        delta_a, delta_b = value - a, value * value - b
        variance = b - a * a
        ratio = 0.0
        if variance > FLAT_TOLERANCE * b:
            ratio = (b * delta_a - 0.5 * a * delta_b) / (variance * math.sqrt(variance))
        a += eta * delta_a
        b += eta * delta_b
        return ratio

    return reward


UNROLL_LIMIT = 32
"""Up to this many symbols, step's per-symbol arithmetic runs as generated straight-line code
(a loop over zip costs several times more in CPython); above, as loops."""
Clip = Callable[[list[float], float], tuple[float, ...]]
Account = Callable[[tuple[float, ...], list[float], tuple[float, ...]], tuple[float, float]]


def _clip_loop(values: list[float], limit: float) -> tuple[float, ...]:
    return tuple([(-1.0 if v < -1.0 else 1.0 if v > 1.0 else v) * limit for v in values])


def _account_loop(
    weights: tuple[float, ...], moves: list[float], targets: tuple[float, ...]
) -> tuple[float, float]:
    exposure = 0.0
    for weight, change in zip(weights, moves, strict=False):
        exposure += weight * change
    growth = 1.0 + exposure
    turnover = 0.0
    if growth > 0.0:
        for weight, ratio, target in zip(weights, moves[len(weights) :], targets, strict=False):
            turnover += abs(target - weight * ratio / growth)
    return growth, turnover


@functools.cache
def _kernels(n_symbols: int) -> tuple[Clip, Account]:
    """clip(values, limit): the targets of a continuous action; account(weights, moves,
    targets): (growth, turnover) of a step (see the module docstring). Straight-line code for
    `n_symbols` (the same operations in the same order as the loops: sums left to right),
    like `dataclasses` generates its methods; loops above UNROLL_LIMIT."""
    if n_symbols > UNROLL_LIMIT:
        return _clip_loop, _account_loop
    n = range(n_symbols)

    def unpack(name: str) -> str:
        return ", ".join(f"{name}{i}" for i in n) + ","

    clipped = ", ".join(
        f"(-1.0 if v{i} < -1.0 else 1.0 if v{i} > 1.0 else v{i}) * limit" for i in n
    )
    exposure = " + ".join(f"w{i} * r{i}" for i in n)
    turnover = " + ".join(f"abs(t{i} - w{i} * g{i} / growth)" for i in n)
    source = f"""
def clip(values, limit):
    {unpack("v")} = values
    return ({clipped},)

def account(weights, moves, targets):
    {unpack("w")} = weights
    {unpack("r")} {unpack("g")} = moves
    growth = 1.0 + ({exposure})
    if growth > 0.0:
        {unpack("t")} = targets
        return growth, 0.0 + {turnover}
    return growth, 0.0
"""
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<trading kernels, {n_symbols} symbols>", "exec"), namespace)
    return namespace["clip"], namespace["account"]


class _RewardState:
    """The reward of one environment, from its step returns (pure Python floats; the state
    of an episode lives in the closure `compute`, made afresh by `reset`)."""

    def __init__(self, spec: EnvironmentSpec) -> None:
        self.kind = spec.reward
        self.window = spec.reward_window
        self.eta = 1.0 / spec.reward_window
        self.compute: Reward = _returns
        """compute(step_return, growth): the reward of a step (growth = 1 + step_return)."""
        self.reset()

    def reset(self) -> None:
        """Forget the episode's returns."""
        if self.kind == "returns":
            self.compute = _returns
        elif self.kind == "log_returns":
            self.compute = _log_returns
        elif self.kind == "differential_sharpe":
            self.compute = _differential_sharpe(self.eta)
        else:
            self.compute = _rolling_ratio(self.window, self.kind == "sortino")

    def __getstate__(self) -> dict[str, Any]:
        """Picklable: the closure's variables instead of the closure."""
        state = self.__dict__.copy()
        compute = state.pop("compute")
        cells = zip(compute.__code__.co_freevars, compute.__closure__ or (), strict=True)
        state["closure"] = {name: cell.cell_contents for name, cell in cells}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        closure = state.pop("closure")
        self.__dict__.update(state)
        self.reset()
        cells = zip(self.compute.__code__.co_freevars, self.compute.__closure__ or (), strict=True)
        for name, cell in cells:
            cell.cell_contents = closure[name]


OBSERVATION_BLOCK = 256
"""Observations are cut from the market's windows this many bars at a time (one copy)."""


class TradingEnvironment(gymnasium.Env[npt.NDArray[Any], Any]):
    """One multi-symbol trading environment over `market` configured by `spec` (timing,
    accounting, spaces and rewards: see the module docstring).

    `seed` seeds the episode-start generator (`reset(seed=...)` re-seeds it, as usual);
    `random_start` overrides `spec.randomStart` (e.g. False for evaluation). `info` of
    reset and step: portfolio_value (equity), positions (tuple of the S weights after the
    fill, in symbol order), costs (charged this step, in currency), turnover (sum |traded
    weight|), step (steps taken in the episode).

    Observations: each one is its own memory, which the environment never writes again once
    returned (keep it, stack it, change it: later steps do not touch it). They are rows of
    a block the environment copies from the market's windows `OBSERVATION_BLOCK` bars at a
    time, its weights written in at the step, so one observation keeps its block (~0.5 MB at
    the quickstart's size) alive; copy it to keep a lone observation for long.

    Hooks for an extension's environment (`environment.type: <package>.<name>`, see
    `tradewind.trainer.rl.extension`): a subclass overrides `shape_reward` and
    `shape_observation` (and sets `observation_space` in its `__init__` when it changes the
    observation's shape), nothing of the accounting."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(
        self,
        market: Market,
        spec: EnvironmentSpec,
        seed: int | None = None,
        random_start: bool | None = None,
    ) -> None:
        self.market, self.env_spec = market, spec
        self.arrays = MarketArrays.build(market, spec)
        self.random_start = spec.random_start if random_start is None else random_start
        self.observation_space = observation_space_of(self.arrays)
        self.action_space = action_space_of(spec, market.num_symbols)
        self.render_mode = None
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._discrete = spec.action_space == "discrete"
        self._box_shape = None if self._discrete else (market.num_symbols,)
        self._max_position = spec.max_position_size
        self._cost_rate = cost_rate(spec.transaction_cost, spec.slippage)
        self._episode_length = spec.episode_length
        self._rewards = _RewardState(spec)
        self._reward = self._rewards.compute
        # What step reads, as plain Python: a row of `_moves` is (returns, gross) of a bar.
        moves = np.concatenate([self.arrays.returns, self.arrays.gross], axis=1)
        self._moves: list[list[float]] = moves.tolist()
        self._clip, self._account = _kernels(market.num_symbols)
        self._windows = self.arrays.windows()
        self._window_size = self.arrays.window_size
        self._first_bar = self.arrays.first_bar
        self._block: Observation = np.zeros((0, self.arrays.observation_size), np.float32)
        self._block_rows = 0
        self._block_end = 0  # the block holds the windows of bars [_block_end - rows, _block_end)
        self._bar = -1  # not reset yet
        self._steps = 0
        self._value = spec.initial_balance
        self._weights: tuple[float, ...] = (0.0,) * market.num_symbols
        self._over = True
        cls = type(self)
        self._shaped = (
            cls.shape_reward is not TradingEnvironment.shape_reward
            or cls.shape_observation is not TradingEnvironment.shape_observation
        )

    def shape_reward(self, reward: float, info: dict[str, Any]) -> float:
        """The reward of a step: the built-in one (`environment.reward`) unless a subclass
        changes it. `info` is a copy of the step's info (portfolio_value, positions, costs,
        turnover, step)."""
        return reward

    def shape_observation(self, observation: Observation, info: dict[str, Any]) -> Any:
        """The observation returned by reset (`info["step"] == 0`) and step: the built-in one
        unless a subclass changes it (within its `observation_space`). `info` is a copy of the
        reset's or step's info."""
        return observation

    @property
    def bar(self) -> int:
        """The bar (index into the market) the environment is at: the last bar observed."""
        return self._bar

    def __getstate__(self) -> dict[str, Any]:
        """Picklable mid-episode: the generated kernels and the reward closure are rebuilt."""
        state = self.__dict__.copy()
        for generated in ("_clip", "_account", "_reward"):
            del state[generated]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clip, self._account = _kernels(self.arrays.n_symbols)
        self._reward = self._rewards.compute

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode (at a random bar when random_start); `options` is unused."""
        super().reset(seed=seed)
        offset = int(self.np_random.integers(0, self.arrays.n_starts)) if self.random_start else 0
        self._bar = self.arrays.first_bar + offset
        self._steps = 0
        self._value = self.env_spec.initial_balance
        self._weights = (0.0,) * self.arrays.n_symbols
        self._over = False
        self._rewards.reset()
        self._reward = self._rewards.compute
        info = {
            "portfolio_value": self._value,
            "positions": self._weights,
            "costs": 0.0,
            "turnover": 0.0,
            "step": 0,
        }
        self._new_block(self._bar)
        if self._shaped:
            return self.shape_observation(self._observe(), dict(info)), info
        return self._observe(), info

    def step(self, action: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Hold through bar t -> t+1, fill `action` at bar t+1's fill price (close or open,
        `data.execution`), observe bar t+1."""
        if self._over:
            raise RuntimeError("the episode is over (or not started): call reset()")
        if type(action) is np.ndarray and action.shape == self._box_shape:  # the common case
            targets = self._clip(action.tolist(), self._max_position)
        else:
            targets = self._targets(action)
        weights, bar = self._weights, self._bar + 1
        # returns of bar t -> t+1, then fill-price ratios
        growth, turnover = self._account(weights, self._moves[bar], targets)
        cost_fraction = self._cost_rate * turnover
        step_growth = growth * (1.0 - cost_fraction)
        costs = self._value * growth * cost_fraction
        bankrupt = not step_growth > 0.0
        if bankrupt:
            step_growth, step_return, targets = 0.0, -1.0, (0.0,) * len(targets)
        else:
            step_return = step_growth - 1.0
        self._value *= step_growth
        self._weights, self._bar = targets, bar
        self._steps += 1
        truncated = self._steps >= self._episode_length
        self._over = bankrupt or truncated
        info = {
            "portfolio_value": self._value,
            "positions": targets,
            "costs": costs,
            "turnover": turnover,
            "step": self._steps,
        }
        reward = self._reward(step_return, step_growth)
        if bar >= self._block_end:
            self._new_block(bar)
        observation = self._block[bar - self._block_end + self._block_rows]
        observation[self._window_size :] = targets  # over the next bar's first S values
        if self._shaped:
            reward = float(self.shape_reward(reward, dict(info)))
            shaped = self.shape_observation(observation, dict(info))
            return shaped, reward, bankrupt, truncated, info
        return observation, reward, bankrupt, truncated, info

    def _targets(self, action: Any) -> tuple[float, ...]:
        n_symbols, limit = self.arrays.n_symbols, self._max_position
        if self._discrete:
            index = int(action)
            if not 0 <= index < 3**n_symbols:
                raise ValueError(f"discrete action {index} outside [0, {3**n_symbols})")
            return discrete_targets(index, n_symbols, limit)
        if type(action) is np.ndarray and action.ndim == 1:
            values = action.tolist()
        else:
            values = np.ravel(np.asarray(action)).tolist()
        if len(values) != n_symbols:
            raise ValueError(f"continuous action needs {n_symbols} values, got {len(values)}")
        return self._clip(values, limit)

    def _new_block(self, bar: int) -> None:
        """A fresh copy of the windows of bars `bar` .. up to OBSERVATION_BLOCK - 1 later
        (no further than the episode's or the market's last bar)."""
        first = bar - self._first_bar
        last_of_episode = self._bar - self._first_bar + self._episode_length - self._steps
        end = min(first + OBSERVATION_BLOCK, last_of_episode + 1, len(self._windows))
        self._block = self._windows[first:end].copy()
        self._block_rows = end - first
        self._block_end = self._first_bar + end

    def _observe(self) -> Observation:
        observation: Observation = self._block[self._bar - self._block_end + len(self._block)]
        observation[self._window_size :] = self._weights  # over the next bar's first S values
        return observation
