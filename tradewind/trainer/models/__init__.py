"""Trading models: CNN, LSTM, attention LSTM and hybrid CNN+LSTM, or an extension's model
(`<package>.<name>`, see tradewind.extensions), built from a ModelSpec.

Every model maps [B, T, F] feature windows to a ModelOutput (class logits, and the forward
return, its log-variance, attention weights and a seq2seq forecast when enabled).
"""

from __future__ import annotations

from tradewind.api.training import ModelSpec, Seq2SeqSpec
from tradewind.extensions import is_extension
from tradewind.trainer.models.base import Encoding, ModelOutput, TradingModel
from tradewind.trainer.models.cnn import CNNModel
from tradewind.trainer.models.extension import build_extension_model
from tradewind.trainer.models.hybrid import HybridCNNLSTM
from tradewind.trainer.models.lstm import AttentionLSTM, LSTMModel

__all__ = [
    "AttentionLSTM",
    "CNNModel",
    "Encoding",
    "HybridCNNLSTM",
    "LSTMModel",
    "ModelOutput",
    "TradingModel",
    "build_model",
]


def build_model(
    spec: ModelSpec, n_features: int, lookback: int, seq2seq: Seq2SeqSpec | None = None
) -> TradingModel:
    """The model `spec.type` names, for windows of `lookback` bars x `n_features` features.

    `seq2seq` adds the forecasting decoder; only lstm and attention_lstm support it.
    """
    if seq2seq is not None and spec.type not in ("lstm", "attention_lstm"):
        raise ValueError(f"seq2seq needs model type lstm or attention_lstm, not {spec.type}")
    if is_extension(spec.type):
        return build_extension_model(spec, n_features, lookback)
    if spec.type == "cnn":
        return CNNModel(n_features, lookback, spec.cnn, spec.heads, spec.dropout)
    if spec.type == "lstm":
        return LSTMModel(n_features, lookback, spec.lstm, spec.heads, spec.dropout, seq2seq)
    if spec.type == "attention_lstm":
        return AttentionLSTM(n_features, lookback, spec.lstm, spec.heads, spec.dropout, seq2seq)
    return HybridCNNLSTM(
        n_features, lookback, spec.cnn, spec.lstm, spec.fusion, spec.heads, spec.dropout
    )
