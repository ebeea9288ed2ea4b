"""Building blocks shared by the models: convolutions, attention, stacked LSTMs, pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tradewind.api.training import ConvLayer, LSTMSpec


def pool_sequence(sequence: Tensor) -> Tensor:
    """[B, T, D] -> [B, 2D]: the mean over time next to the most recent step."""
    return torch.cat([sequence.mean(dim=1), sequence[:, -1]], dim=-1)


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> Tensor:
    """[length, dim] fixed sinusoidal position encoding (Vaswani et al.)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rates = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / dim)
    )
    encoding = torch.zeros(length, dim, device=device)
    encoding[:, 0::2] = torch.sin(position * rates)
    encoding[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return encoding


class MultiScaleConv(nn.Module):
    """Parallel 1-D convolutions of different widths over time, concatenated on channels.

    Each scale is conv -> (batch norm) -> GELU with 'same' padding. Scales whose lengths
    differ (strides > 1, even kernels) are average-pooled to the shortest one.
    """

    def __init__(self, n_features: int, layers: list[ConvLayer], batch_norm: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(
                    n_features,
                    layer.out_channels,
                    layer.kernel_size,
                    stride=layer.stride,
                    padding=layer.kernel_size // 2,
                    bias=not batch_norm,
                ),
                nn.BatchNorm1d(layer.out_channels) if batch_norm else nn.Identity(),
                nn.GELU(),
            )
            for layer in layers
        )
        self.out_channels = sum(layer.out_channels for layer in layers)

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, F] -> [B, T', out_channels] (T' = T with stride 1 and odd kernels)."""
        channels_first = x.transpose(1, 2)
        scales: list[Tensor] = [branch(channels_first) for branch in self.branches]
        length = min(s.shape[-1] for s in scales)
        aligned = [s if s.shape[-1] == length else F.adaptive_avg_pool1d(s, length) for s in scales]
        return torch.cat(aligned, dim=1).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head attention with a residual connection and layer norm (post-norm).

    Without `key_value` it is self-attention; with it, `query` attends to `key_value`
    (cross-attention). Returns the attended sequence and the weights averaged over heads.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: Tensor, key_value: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, T, D] (, [B, S, D]) -> [B, T, D], weights [B, T, S]."""
        source = query if key_value is None else key_value
        attended, weights = self.attention(query, source, source, need_weights=True)
        out: Tensor = self.norm(query + self.dropout(attended))
        return out, weights


class AttentionPooling(nn.Module):
    """A learned query attends over the sequence: one weight per time step and head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T, D] -> context [B, D], weights [B, T] averaged over heads."""
        query = self.query.expand(sequence.shape[0], -1, -1)
        context, weights = self.attention(query, sequence, sequence, need_weights=True)
        return context.squeeze(1), weights.squeeze(1)


class StackedLSTM(nn.Module):
    """LSTM layers stacked one by one so that dropout (an nn.Dropout, which dropout
    scheduling reaches) and residual connections can sit between them.

    With `skip_connections`, every layer after the first adds its input to its output
    (the first cannot: its input is the feature width).
    """

    def __init__(self, n_features: int, spec: LSTMSpec, dropout: float) -> None:
        super().__init__()
        directions = 2 if spec.bidirectional else 1
        self.output_dim = spec.hidden_size * directions
        self.layers = nn.ModuleList(
            nn.LSTM(
                n_features if i == 0 else self.output_dim,
                spec.hidden_size,
                batch_first=True,
                bidirectional=spec.bidirectional,
            )
            for i in range(spec.num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.skip_connections = spec.skip_connections

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, F] -> [B, T, output_dim]."""
        out = x
        for i, lstm in enumerate(self.layers):
            if i == 0:
                out = _lstm_outputs(lstm, out)
                continue
            y = _lstm_outputs(lstm, self.dropout(out))
            out = out + y if self.skip_connections else y
        return out


def _lstm_outputs(lstm: nn.Module, x: Tensor) -> Tensor:
    """The LSTM's output sequence. Under CPU autocast (bf16) it runs in fp32: oneDNN has no
    bf16 LSTM on CPUs without AVX-512 bf16, where autocast's bf16 LSTM fails outright."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out, _ = lstm(x.float())
        return out  # type: ignore[no-any-return]
    out, _ = lstm(x)
    return out  # type: ignore[no-any-return]
