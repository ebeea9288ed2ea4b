"""The contract every trading model keeps: ModelOutput, the TradingModel base and its heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tradewind.api.training import HeadsSpec, Seq2SeqSpec
from tradewind.trainer.models.seq2seq import Seq2SeqDecoder

LOG_VAR_BOUND = 20.0
"""Predicted log-variances are squashed softly into (-bound, bound) so exp() stays finite."""


@dataclass
class ModelOutput:
    """What every model returns; heads that are off leave their field None."""

    logits: Tensor
    """[B, num_classes] class scores (Sell, Hold, Buy with 3 classes)."""
    ret: Tensor | None = None
    """[B] predicted forward return (regression head)."""
    log_var: Tensor | None = None
    """[B] predicted log-variance of the forward return (uncertainty head)."""
    attention: Tensor | None = None
    """[B, T, T] (self or cross attention) or [B, T] (attention pooling), averaged over
    heads, for a heatmap; None when the model has no attention."""
    sequence: Tensor | None = None
    """[B, output_length] seq2seq forecast of the next returns."""


@dataclass
class Encoding:
    """What a model's encoder hands to the shared heads."""

    embedding: Tensor
    """[B, embed_dim] summary of the window."""
    attention: Tensor | None = None
    """Attention weights to expose in ModelOutput.attention."""


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


class OutputHeads(nn.Module):
    """Classification head, and the regression and uncertainty heads when enabled."""

    def __init__(self, dim: int, spec: HeadsSpec, dropout: float) -> None:
        super().__init__()
        hidden = max(dim // 2, 8)
        self.dropout = nn.Dropout(dropout)
        self.classification = _mlp(dim, hidden, spec.num_classes)
        self.regression = _mlp(dim, hidden, 1) if spec.regression else None
        self.uncertainty = _mlp(dim, hidden, 1) if spec.uncertainty else None

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """[B, dim] -> logits [B, C], return [B] or None, log-variance [B] or None."""
        h = self.dropout(embedding)
        logits: Tensor = self.classification(h)
        ret = log_var = None
        if self.regression is not None:
            ret = self.regression(h).squeeze(-1)
        if self.uncertainty is not None:
            raw: Tensor = self.uncertainty(h).squeeze(-1)
            # tanh instead of clamp keeps a gradient at the bounds
            log_var = LOG_VAR_BOUND * torch.tanh(raw / LOG_VAR_BOUND)
        return logits, ret, log_var


class TradingModel(nn.Module):
    """Base of all models: [B, T, F] windows -> ModelOutput.

    Subclasses build an encoder and implement `_encode(x) -> Encoding`; this class owns the
    output heads, the optional seq2seq decoder, input checks and dropout scheduling.
    """

    def __init__(
        self,
        n_features: int,
        lookback: int,
        embed_dim: int,
        heads: HeadsSpec,
        dropout: float,
        seq2seq: Seq2SeqSpec | None = None,
    ) -> None:
        super().__init__()
        if n_features < 1 or lookback < 1:
            raise ValueError(f"n_features ({n_features}) and lookback ({lookback}) must be >= 1")
        self.n_features = n_features
        self.lookback = lookback
        self.embed_dim = embed_dim
        self.output_heads = OutputHeads(embed_dim, heads, dropout)
        self.decoder = (
            Seq2SeqDecoder(embed_dim, seq2seq.output_length) if seq2seq is not None else None
        )

    def forward(
        self,
        x: Tensor,
        target_sequence: Tensor | None = None,
        teacher_forcing_ratio: float = 0.0,
    ) -> ModelOutput:
        """Score a batch of windows.

        x: [B, T, F] normalised features. target_sequence: [B, output_length] true future
        returns, fed to the seq2seq decoder with probability `teacher_forcing_ratio` per step
        and sample, in training mode only; ignored by models without a decoder.
        """
        if x.dim() != 3 or x.shape[-1] != self.n_features:
            raise ValueError(
                f"expected input [batch, time, {self.n_features}], got {list(x.shape)}"
            )
        encoding = self._encode(x)
        logits, ret, log_var = self.output_heads(encoding.embedding)
        sequence = None
        if self.decoder is not None:
            ratio = teacher_forcing_ratio if self.training else 0.0
            sequence = self.decoder(encoding.embedding, target_sequence, ratio)
        return ModelOutput(logits, ret, log_var, encoding.attention, sequence)

    def set_dropout(self, p: float) -> None:
        """Set the rate of every nn.Dropout in the model (dropout scheduling)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p

    def _encode(self, x: Tensor) -> Encoding:
        raise NotImplementedError
