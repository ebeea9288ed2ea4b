"""Stop an agent whose training diverged: a NaN or infinite loss or policy parameter ends
the run with `NonFiniteLossError` (exit 65, not retried) before it is acted on, evaluated or
checkpointed. Put it first among an agent's callbacks, ahead of evaluation and checkpoints."""

from __future__ import annotations

import math

import torch
from stable_baselines3.common.callbacks import BaseCallback

from tradewind.trainer.entrypoint import NonFiniteLossError


def non_finite_losses(logged: dict[str, float]) -> dict[str, float]:
    """The losses among SB3's logged values (`train/...loss...`) that are NaN or infinite."""
    return {
        key: float(value)
        for key, value in logged.items()
        if key.startswith("train/") and "loss" in key and not math.isfinite(float(value))
    }


def parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of `module` is finite: their total norm is (one fused
    reduction and one device sync)."""
    params = list(module.parameters())
    if not params:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(params)))


class FiniteTrainingCheck(BaseCallback):
    """Before each rollout and at the end of training: the losses SB3 logged for the last
    update and the parameters of the policy (actor, critics and their targets). Raises
    `NonFiniteLossError` if any is NaN or infinite, before the policy acts on them (a NaN
    Gaussian policy would otherwise fail in torch.distributions, a failure worth a restart)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.check()

    def _on_training_end(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise `NonFiniteLossError` if a logged loss or a policy parameter is not finite."""
        bad = non_finite_losses(dict(self.model.logger.name_to_value))
        if bad:
            self._diverged(", ".join(f"{k}={v}" for k, v in sorted(bad.items())))
        if not parameters_finite(self.model.policy):
            self._diverged("a parameter of the policy is NaN or infinite")

    def _diverged(self, what: str) -> None:
        algorithm = type(self.model).__name__
        raise NonFiniteLossError(
            f"{algorithm} training diverged at {self.num_timesteps} timesteps: {what}. A "
            "restart from the latest checkpoint would diverge again: lower the agent's "
            "learning_rate (or max_grad_norm), or set normalize"
        )
