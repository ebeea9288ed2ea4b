"""RLEnsemble: trained agents acting as one policy, by weighted average, majority vote,
Thompson sampling over their recent performance or both together (`combined`), with the
members' disagreement as an uncertainty estimate that can scale the exposure down.

Members act in their own action spaces (a run may mix dqn with sac or td3); each member's
actions are first mapped to target weights per symbol (discrete actions decode to -1/0/+1
per symbol), combined, then mapped to the ensemble's space (continuous when they differ).

Learning while trading uses realised returns only. The episode loop tells the ensemble, after
each step, the per-symbol returns of the bar that step moved to (`observe`): that bar has
closed, and the next decision observes it. They are credited to each member's targets that
were held over that bar, the ones decided two acts ago (the last act's targets fill only at
this bar's close), so a decision never depends on the return of a bar after the one it
observes. Thompson beliefs, and the re-weighting (`ReweightingSpec`), read those returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tradewind.api.rl import EnsembleSpec, ReweightingSpec

FloatArray = npt.NDArray[np.float64]
Policy = Callable[[np.ndarray], np.ndarray]
"""Raw (unnormalised) observations [n_envs, obs] -> actions [n_envs, ...]."""


def decode_discrete(actions: np.ndarray, n_symbols: int) -> FloatArray:
    """Discrete(3**S) actions -> weights in {-1, 0, +1} per symbol (base-3 digits, symbol 0
    least significant: digit 0 short, 1 flat, 2 long)."""
    codes = np.asarray(actions, dtype=np.int64).reshape(-1)
    digits = (codes[:, None] // (3 ** np.arange(n_symbols))) % 3
    return (digits - 1).astype(np.float64)


def encode_discrete(weights: FloatArray) -> np.ndarray:
    """Weights per symbol -> the nearest Discrete(3**S) action."""
    digits = np.clip(np.rint(weights), -1, 1).astype(np.int64) + 1
    codes: np.ndarray = (digits * (3 ** np.arange(weights.shape[1]))).sum(axis=1)
    return codes


def performance_shares(recent: Sequence[Sequence[float]]) -> FloatArray:
    """Shares proportional to exp(t) of each member's t-statistic of its recent returns:
    mean / (standard deviation / sqrt(n)), the deviation floored at 1e-12; 0 with fewer
    than two returns."""
    scores = np.array([_t_statistic(np.asarray(r, dtype=np.float64)) for r in recent])
    exp = np.exp(scores - scores.max())
    shares: FloatArray = exp / exp.sum()
    return shares


def _t_statistic(returns: FloatArray) -> float:
    if len(returns) < 2:
        return 0.0
    spread = max(float(returns.std(ddof=1)), 1e-12)
    return float(returns.mean() / (spread / np.sqrt(len(returns))))


@dataclass
class Member:
    name: str
    policy: Policy
    weight: float = 1.0
    wins: float = 1.0
    losses: float = 1.0
    recent: list[float] = field(default_factory=list)
    discrete: bool | None = None
    """Whether its actions are Discrete(3**S) codes; None: the ensemble's own space."""


class RLEnsemble:
    """Combine members' actions (`act`); call `observe` after each step with the returns of
    the bar it moved to (or `record` with per-member returns) to keep Thompson sampling's
    beliefs and the re-weighted weights current.

    `shares` are the members' weights as shares of 1 (from `Member.weight`, equal when all
    are 0), moved toward recent performance every `reweighting.frequency` recorded returns;
    `uncertainty_scaling` k scales each symbol's combined target by 1 / (1 + k x the
    members' standard deviation on it); `cost_rate` is charged on each member's own
    turnover in the returns `observe` credits (see `EnsembleSpec`)."""

    def __init__(
        self, members: Sequence[Member], method: str, discrete: bool, n_symbols: int,
        window: int = 63, seed: int = 0, *, reweighting: ReweightingSpec | None = None,
        uncertainty_scaling: float = 0.0, cost_rate: float = 0.0,
    ) -> None:  # fmt: skip
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members, self.method, self.discrete = list(members), method, discrete
        self.n_symbols, self.window = n_symbols, window
        self.reweighting, self.uncertainty_scaling = reweighting, uncertainty_scaling
        self.cost_rate = cost_rate
        self.rng = np.random.default_rng(seed)
        weights = np.array([m.weight for m in self.members], dtype=np.float64)
        if not weights.sum() > 0:
            weights = np.ones(len(weights))
        self.shares: FloatArray = weights / weights.sum()
        self.last_uncertainty: FloatArray = np.zeros(0)
        self.last_weights: FloatArray = np.zeros(0)
        self.last_combined: FloatArray = np.zeros(0)
        self.last_shares: FloatArray = self.shares.copy()
        self._decided: list[FloatArray] = []
        self._recorded = 0

    @classmethod
    def from_spec(
        cls, members: Sequence[Member], spec: EnsembleSpec, discrete: bool, n_symbols: int,
        seed: int, cost_rate: float,
    ) -> RLEnsemble:  # fmt: skip
        """The ensemble an RLRun's `ensemble` describes."""
        return cls(
            members, spec.method, discrete, n_symbols, spec.performance_window, seed,
            reweighting=spec.reweighting, uncertainty_scaling=spec.uncertainty_scaling,
            cost_rate=cost_rate,
        )  # fmt: skip

    def member_weights(self, obs: np.ndarray) -> FloatArray:
        """[members, n_envs, symbols] target weights of every member."""
        out = []
        for m in self.members:
            action = np.asarray(m.policy(obs))
            if self.discrete if m.discrete is None else m.discrete:
                out.append(
                    decode_discrete(action, self.n_symbols).reshape(len(obs), self.n_symbols)
                )
            else:
                out.append(np.asarray(action, dtype=np.float64).reshape(len(obs), self.n_symbols))
        return np.stack(out)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The combined action; `last_weights` [members, n_envs, symbols] keeps the members'
        target weights, `last_combined` [n_envs, symbols] the ensemble's (as acted),
        `last_uncertainty` [n_envs] the members' disagreement: the standard deviation of
        their target weights, averaged over symbols, and `last_shares` the members' weights
        (shares) at this decision."""
        weights = self.member_weights(obs)
        self.last_weights, self.last_shares = weights, self.shares.copy()
        self._decided = [*self._decided, np.clip(weights, -1.0, 1.0)][-3:]
        spread = weights.std(axis=0)
        self.last_uncertainty = spread.mean(axis=-1)
        combined = self._combine(weights) / (1.0 + self.uncertainty_scaling * spread)
        if self.discrete:
            self.last_combined = np.clip(np.rint(combined), -1, 1)
            return encode_discrete(combined)
        self.last_combined = combined
        action: np.ndarray = combined.astype(np.float32)
        return action

    def _combine(self, weights: FloatArray) -> FloatArray:
        """[n_envs, symbols] combined target weights of the members' [members, n_envs,
        symbols], by the ensemble's method."""
        if self.method == "majority":
            voted: FloatArray = np.sign(np.sign(weights).sum(axis=0))
            return voted
        if self.method == "thompson_sampling":
            picked: FloatArray = weights[int(np.argmax(self._draw_win_rates()))]
            return picked
        shares = self.shares
        if self.method == "combined":
            blended = shares * self._draw_win_rates()
            shares = blended / blended.sum()
        average: FloatArray = np.tensordot(shares, weights, axes=1)
        return average

    def _draw_win_rates(self) -> FloatArray:
        return np.array([self.rng.beta(m.wins, m.losses) for m in self.members])

    def observe(self, bar_returns: FloatArray) -> None:
        """Credit the per-symbol returns [symbols] (or [n_envs, symbols]) of the bar that
        has just closed to each member's targets held over it (decided two acts ago), less
        `cost_rate` x the member's own turnover into them (drift ignored), averaged over
        environments; then `record` them. Call once after each step; nothing is held over
        the first step's bar."""
        if len(self._decided) < 2:
            return
        held = self._decided[-2]
        before = self._decided[-3] if len(self._decided) > 2 else np.zeros_like(held)
        earned = (held * np.asarray(bar_returns, dtype=np.float64)).sum(axis=-1)
        cost = self.cost_rate * np.abs(held - before).sum(axis=-1)
        self.record((earned - cost).mean(axis=-1).tolist())

    def record(self, member_returns: Sequence[float]) -> None:
        """Update each member's recent returns and its Beta(wins, losses) belief; every
        `reweighting.frequency` calls, move the shares toward `performance_shares`."""
        for m, r in zip(self.members, member_returns, strict=True):
            m.recent = [*m.recent, float(r)][-self.window :]
            wins = sum(x > 0 for x in m.recent)
            m.wins, m.losses = 1.0 + wins, 1.0 + len(m.recent) - wins
        self._recorded += 1
        if self.reweighting is not None and self._recorded % self.reweighting.frequency == 0:
            target = performance_shares([m.recent for m in self.members])
            rate = self.reweighting.adaptation_rate
            self.shares = (1.0 - rate) * self.shares + rate * target
