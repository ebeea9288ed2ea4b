"""`tw_example.tiny_mlp`: an MLP over the mean and the last bar of the feature window."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from tradewind.api.training import HeadsSpec
from tradewind.extensions import model
from tradewind.trainer.models import Encoding, TradingModel


class TinyMLPParams(BaseModel):
    """`model.params` of tw_example.tiny_mlp."""

    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(default=32, ge=1, le=4096)
    """Width of the hidden layer."""
    activation: Literal["relu", "gelu"] = "gelu"
    """Activation of the hidden layer."""


class TinyMLP(TradingModel):
    """[B, T, F] windows -> the mean over time and the last bar, side by side -> an MLP of
    `hidden` units; TradingModel adds the heads (classes, return, log-variance)."""

    def __init__(
        self,
        n_features: int,
        lookback: int,
        heads: HeadsSpec,
        dropout: float,
        hidden: int,
        activation: str,
    ) -> None:
        super().__init__(n_features, lookback, hidden, heads, dropout)
        self.encoder = nn.Sequential(
            nn.Linear(2 * n_features, hidden),
            nn.ReLU() if activation == "relu" else nn.GELU(),
            nn.Dropout(dropout),
        )

    def _encode(self, x: Tensor) -> Encoding:
        summary = torch.cat([x.mean(dim=1), x[:, -1, :]], dim=-1)
        return Encoding(self.encoder(summary))


@model(params=TinyMLPParams)
def tiny_mlp(
    *, n_features: int, lookback: int, heads: HeadsSpec, dropout: float, params: TinyMLPParams
) -> TinyMLP:
    """The factory the entry point names; Tradewind calls it with keyword arguments."""
    return TinyMLP(n_features, lookback, heads, dropout, params.hidden, params.activation)
