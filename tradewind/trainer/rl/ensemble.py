"""RLEnsemble: trained agents acting as one policy, by weighted average, majority vote or
Thompson sampling over their recent performance, with the members' disagreement as an
uncertainty estimate.

Members act in the environment's action space; each is first mapped to target weights per
symbol (discrete actions decode to -1/0/+1 per symbol), combined, then mapped back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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


@dataclass
class Member:
    name: str
    policy: Policy
    weight: float = 1.0
    wins: float = 1.0
    losses: float = 1.0
    recent: list[float] = field(default_factory=list)


class RLEnsemble:
    """Combine members' actions; call `record` with each step's per-member returns to keep
    Thompson sampling's beliefs current."""

    def __init__(
        self, members: Sequence[Member], method: str, discrete: bool, n_symbols: int,
        window: int = 63, seed: int = 0,
    ) -> None:  # fmt: skip
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members, self.method, self.discrete = list(members), method, discrete
        self.n_symbols, self.window = n_symbols, window
        self.rng = np.random.default_rng(seed)
        self.last_uncertainty: FloatArray = np.zeros(0)
        self.last_weights: FloatArray = np.zeros(0)
        self.last_combined: FloatArray = np.zeros(0)

    def member_weights(self, obs: np.ndarray) -> FloatArray:
        """[members, n_envs, symbols] target weights of every member."""
        out = []
        for m in self.members:
            action = np.asarray(m.policy(obs))
            if self.discrete:
                out.append(
                    decode_discrete(action, self.n_symbols).reshape(len(obs), self.n_symbols)
                )
            else:
                out.append(np.asarray(action, dtype=np.float64).reshape(len(obs), self.n_symbols))
        return np.stack(out)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The combined action; `last_weights` [members, n_envs, symbols] keeps the members'
        target weights, `last_combined` [n_envs, symbols] the ensemble's (as acted) and
        `last_uncertainty` [n_envs] the members' disagreement: the standard deviation of
        their target weights, averaged over symbols."""
        weights = self.member_weights(obs)
        self.last_weights = weights
        self.last_uncertainty = weights.std(axis=0).mean(axis=-1)
        if self.method == "majority":
            combined = np.sign(np.sign(weights).sum(axis=0))
        elif self.method == "thompson_sampling":
            samples = np.array([self.rng.beta(m.wins, m.losses) for m in self.members])
            combined = weights[int(np.argmax(samples))]
        else:
            w = np.array([m.weight for m in self.members], dtype=np.float64)
            combined = np.tensordot(w / w.sum(), weights, axes=1)
        if self.discrete:
            self.last_combined = np.clip(np.rint(combined), -1, 1)
            return encode_discrete(combined)
        self.last_combined = combined
        action: np.ndarray = combined.astype(np.float32)
        return action

    def record(self, member_returns: Sequence[float]) -> None:
        """Update each member's recent returns and its Beta(wins, losses) belief."""
        for m, r in zip(self.members, member_returns, strict=True):
            m.recent = [*m.recent, float(r)][-self.window :]
            wins = sum(x > 0 for x in m.recent)
            m.wins, m.losses = 1.0 + wins, 1.0 + len(m.recent) - wins
