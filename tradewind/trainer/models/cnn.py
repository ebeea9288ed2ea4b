"""CNNModel: multi-scale 1-D convolutions with batch norm and self-attention."""

from __future__ import annotations

from torch import Tensor, nn

from tradewind.api.training import CNNSpec, HeadsSpec
from tradewind.trainer.models.base import Encoding, TradingModel
from tradewind.trainer.models.blocks import (
    MultiScaleConv,
    SelfAttention,
    pool_sequence,
    sinusoidal_positions,
)


class CNNEncoder(nn.Module):
    """Multi-scale convolutions, then (when `attention_heads` > 0) self-attention over the
    convolved sequence with sinusoidal positions added, since convolutions alone tell
    attention little about where in the window a pattern sits."""

    def __init__(self, n_features: int, spec: CNNSpec, dropout: float) -> None:
        super().__init__()
        self.conv = MultiScaleConv(n_features, spec.layers, spec.batch_norm)
        self.output_dim = self.conv.out_channels
        self.dropout = nn.Dropout(dropout)
        self.attention = (
            SelfAttention(self.output_dim, spec.attention_heads, dropout)
            if spec.attention_heads > 0
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, T, F] -> sequence [B, T', output_dim], attention [B, T', T'] or None."""
        sequence: Tensor = self.dropout(self.conv(x))
        if self.attention is None:
            return sequence, None
        positions = sinusoidal_positions(sequence.shape[1], self.output_dim, sequence.device)
        return self.attention(sequence + positions.to(sequence.dtype))  # type: ignore[no-any-return]


class CNNModel(TradingModel):
    """Multi-scale CNN: parallel convolutions of several widths (batch norm), optional
    self-attention, then the mean and the last step of the sequence feed the heads."""

    def __init__(
        self,
        n_features: int,
        lookback: int,
        spec: CNNSpec,
        heads: HeadsSpec,
        dropout: float,
    ) -> None:
        embed_dim = 2 * sum(layer.out_channels for layer in spec.layers)
        super().__init__(n_features, lookback, embed_dim, heads, dropout)
        self.encoder = CNNEncoder(n_features, spec, dropout)

    def _encode(self, x: Tensor) -> Encoding:
        sequence, attention = self.encoder(x)
        return Encoding(pool_sequence(sequence), attention)
