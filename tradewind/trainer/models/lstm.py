"""LSTMModel (stacked, bidirectional, skip connections, self-attention) and AttentionLSTM
(the same recurrent encoder read out by attention pooling)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tradewind.api.training import HeadsSpec, LSTMSpec, Seq2SeqSpec
from tradewind.trainer.models.base import Encoding, TradingModel
from tradewind.trainer.models.blocks import (
    AttentionPooling,
    SelfAttention,
    StackedLSTM,
    pool_sequence,
)


class LSTMEncoder(nn.Module):
    """Stacked LSTM, then (when `attention_heads` > 0) multi-head self-attention over its
    outputs."""

    def __init__(self, n_features: int, spec: LSTMSpec, dropout: float) -> None:
        super().__init__()
        self.lstm = StackedLSTM(n_features, spec, dropout)
        self.output_dim = self.lstm.output_dim
        self.attention = (
            SelfAttention(self.output_dim, spec.attention_heads, dropout)
            if spec.attention_heads > 0
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, T, F] -> sequence [B, T, output_dim], attention [B, T, T] or None."""
        sequence: Tensor = self.lstm(x)
        if self.attention is None:
            return sequence, None
        return self.attention(sequence)  # type: ignore[no-any-return]


def _lstm_width(spec: LSTMSpec) -> int:
    return spec.hidden_size * (2 if spec.bidirectional else 1)


class LSTMModel(TradingModel):
    """Stacked (bidirectional) LSTM with skip connections and optional self-attention; the
    mean and the last step of its outputs feed the heads (and the seq2seq decoder)."""

    def __init__(
        self,
        n_features: int,
        lookback: int,
        spec: LSTMSpec,
        heads: HeadsSpec,
        dropout: float,
        seq2seq: Seq2SeqSpec | None = None,
    ) -> None:
        super().__init__(n_features, lookback, 2 * _lstm_width(spec), heads, dropout, seq2seq)
        self.encoder = LSTMEncoder(n_features, spec, dropout)

    def _encode(self, x: Tensor) -> Encoding:
        sequence, attention = self.encoder(x)
        return Encoding(pool_sequence(sequence), attention)


class AttentionLSTM(TradingModel):
    """Stacked (bidirectional) LSTM read out by multi-head attention pooling: a learned
    query weighs every time step, so `attention` is [B, T], which bars the model used.

    Attention is what this model is, so `attention_heads` = 0 means one head.
    """

    def __init__(
        self,
        n_features: int,
        lookback: int,
        spec: LSTMSpec,
        heads: HeadsSpec,
        dropout: float,
        seq2seq: Seq2SeqSpec | None = None,
    ) -> None:
        width = _lstm_width(spec)
        super().__init__(n_features, lookback, 2 * width, heads, dropout, seq2seq)
        self.lstm = StackedLSTM(n_features, spec, dropout)
        self.pooling = AttentionPooling(width, max(spec.attention_heads, 1))

    def _encode(self, x: Tensor) -> Encoding:
        sequence: Tensor = self.lstm(x)
        context, weights = self.pooling(sequence)
        return Encoding(torch.cat([context, sequence[:, -1]], dim=-1), weights)
