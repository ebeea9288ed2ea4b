"""MultiTaskLoss: the weighted sum of the terms of the heads a model has.

Terms (each skipped when its weight is 0 or its head is off):

- classification: cross-entropy of the logits, optionally class-weighted for imbalance;
- regression: Gaussian negative log-likelihood 0.5 * (log_var + (y - ret)^2 / exp(log_var))
  (constant dropped) when the uncertainty head is on, else the mean squared error;
- uncertainty: mean(log_var^2), which pulls the predicted log-variance towards 0 so it can
  neither collapse on memorised samples nor blow up. It assumes returns on a unit scale:
  with raw returns (variance ~1e-4) it biases the variance upwards, so standardise y_ret;
- sequence: mean squared error of the seq2seq forecast, when both the forecast and `y_seq`
  are given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tradewind.api.training import HeadsSpec, LossWeights
from tradewind.trainer.models import ModelOutput

LossFn = Callable[[ModelOutput, Tensor, Tensor], tuple[Tensor, dict[str, float]]]
"""(output, y_class, y_ret) -> (loss, components): what the techniques take as a loss."""


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood without its constant, from the log-variance
    (no variance floor, unlike F.gaussian_nll_loss, whose eps would swamp return variances)."""
    return 0.5 * (log_var + (target - mean).pow(2) * torch.exp(-log_var)).mean()


class MultiTaskLoss(nn.Module):
    """Weighted multi-task loss over a ModelOutput; see the module docstring for the terms.

    `class_weights` ([num_classes]) rescales the cross-entropy per class, e.g. inverse
    class frequencies of the training labels.
    """

    def __init__(
        self, weights: LossWeights, heads: HeadsSpec, class_weights: Tensor | None = None
    ) -> None:
        super().__init__()
        if class_weights is not None and class_weights.shape != (heads.num_classes,):
            raise ValueError(
                f"class_weights must have shape [{heads.num_classes}], "
                f"got {list(class_weights.shape)}"
            )
        self.weights = weights
        self.heads = heads
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", class_weights)

    def forward(
        self, out: ModelOutput, y_class: Tensor, y_ret: Tensor, y_seq: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss, and every computed term (unweighted) and `total` as floats.

        y_class: [B] class indices; y_ret: [B] forward returns; y_seq: [B, L] future returns.
        """
        terms = self._terms(out, y_class, y_ret, y_seq)
        scale = {
            "classification": self.weights.classification,
            "regression": self.weights.regression,
            "uncertainty": self.weights.uncertainty,
            "sequence": self.weights.sequence,
        }
        total = torch.stack([scale[name] * value for name, value in terms.items()]).sum()
        components = {name: value.item() for name, value in terms.items()}
        components["total"] = total.item()
        return total, components

    def _terms(
        self, out: ModelOutput, y_class: Tensor, y_ret: Tensor, y_seq: Tensor | None
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.weights.classification > 0:
            terms["classification"] = F.cross_entropy(
                out.logits.float(), y_class, weight=self.class_weights
            )
        if self.heads.regression and self.weights.regression > 0:
            terms["regression"] = self._regression(out, y_ret)
        if self.heads.uncertainty and self.weights.uncertainty > 0:
            terms["uncertainty"] = _required(out.log_var, "log_var").float().pow(2).mean()
        if out.sequence is not None and y_seq is not None and self.weights.sequence > 0:
            terms["sequence"] = F.mse_loss(out.sequence.float(), y_seq.float())
        if not terms:
            raise ValueError("no loss term is enabled (every weight is 0 or its head is off)")
        return terms

    def _regression(self, out: ModelOutput, y_ret: Tensor) -> Tensor:
        ret = _required(out.ret, "ret").float()
        if self.heads.uncertainty:
            return gaussian_nll(ret, _required(out.log_var, "log_var").float(), y_ret.float())
        return F.mse_loss(ret, y_ret.float())


def _required(value: Tensor | None, name: str) -> Tensor:
    if value is None:
        raise ValueError(f"the heads spec enables `{name}` but the model output has none")
    return value
