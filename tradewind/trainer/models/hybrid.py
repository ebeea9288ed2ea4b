"""HybridCNNLSTM: CNN and LSTM branches over the same window, fused by concat or
cross-attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tradewind.api.training import CNNSpec, FusionSpec, HeadsSpec, LSTMSpec
from tradewind.trainer.models.base import Encoding, TradingModel
from tradewind.trainer.models.blocks import SelfAttention, pool_sequence
from tradewind.trainer.models.cnn import CNNEncoder
from tradewind.trainer.models.lstm import LSTMEncoder


def _projection(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))


class HybridCNNLSTM(TradingModel):
    """CNN branch (local patterns at several scales) and LSTM branch (temporal dynamics),
    each with its own optional self-attention, fused into `fusion.dim` features:

    - `concat`: each branch pooled (mean and last step), joined, projected to `dim`;
    - `cross_attention`: the LSTM sequence (query) attends to the CNN sequence (keys and
      values), both projected to `dim`; the result is pooled and projected to `dim`.

    `attention` is the cross-attention [B, T, T'] when fusing by cross-attention, else the
    LSTM's self-attention, else the CNN's, else None.
    """

    def __init__(
        self,
        n_features: int,
        lookback: int,
        cnn: CNNSpec,
        lstm: LSTMSpec,
        fusion: FusionSpec,
        heads: HeadsSpec,
        dropout: float,
    ) -> None:
        super().__init__(n_features, lookback, fusion.dim, heads, dropout)
        self.cnn = CNNEncoder(n_features, cnn, dropout)
        self.lstm = LSTMEncoder(n_features, lstm, dropout)
        self.method = fusion.method
        if fusion.method == "cross_attention":
            self.query_projection = nn.Linear(self.lstm.output_dim, fusion.dim)
            self.key_projection = nn.Linear(self.cnn.output_dim, fusion.dim)
            self.cross_attention = SelfAttention(fusion.dim, fusion.heads, dropout)
            self.fuse = _projection(2 * fusion.dim, fusion.dim, dropout)
        else:
            pooled_dim = 2 * (self.cnn.output_dim + self.lstm.output_dim)
            self.fuse = _projection(pooled_dim, fusion.dim, dropout)

    def _encode(self, x: Tensor) -> Encoding:
        cnn_sequence, cnn_attention = self.cnn(x)
        lstm_sequence, lstm_attention = self.lstm(x)
        attention = lstm_attention if lstm_attention is not None else cnn_attention
        if self.method == "cross_attention":
            query = self.query_projection(lstm_sequence)
            fused, attention = self.cross_attention(query, self.key_projection(cnn_sequence))
            pooled = pool_sequence(fused)
        else:
            pooled = torch.cat([pool_sequence(cnn_sequence), pool_sequence(lstm_sequence)], -1)
        embedding: Tensor = self.fuse(pooled)
        return Encoding(embedding, attention)
