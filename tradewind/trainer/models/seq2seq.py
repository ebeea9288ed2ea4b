"""LSTM decoder that forecasts the next returns step by step, with teacher forcing."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Seq2SeqDecoder(nn.Module):
    """Unrolls an LSTM cell `output_length` steps from the encoder's embedding.

    Each step reads the previous return (zero before the first) and predicts the next one.
    In teacher forcing, each sample feeds the true previous return instead of its own
    prediction with probability `teacher_forcing_ratio`, drawn per step from torch's
    global generator (seed it for reproducibility).
    """

    def __init__(self, embed_dim: int, output_length: int) -> None:
        super().__init__()
        hidden = max(embed_dim // 2, 1)
        self.output_length = output_length
        self.init_state = nn.Linear(embed_dim, 2 * hidden)
        self.cell = nn.LSTMCell(1, hidden)
        self.readout = nn.Linear(hidden, 1)

    def forward(
        self,
        embedding: Tensor,
        target_sequence: Tensor | None = None,
        teacher_forcing_ratio: float = 0.0,
    ) -> Tensor:
        """[B, embed_dim] -> [B, output_length] forecast returns."""
        batch = embedding.shape[0]
        if target_sequence is not None and target_sequence.shape != (batch, self.output_length):
            raise ValueError(
                f"target_sequence must be [{batch}, {self.output_length}], "
                f"got {list(target_sequence.shape)}"
            )
        h, c = self.init_state(embedding).chunk(2, dim=-1)
        h = torch.tanh(h)
        step_input = embedding.new_zeros(batch, 1)
        forcing = target_sequence is not None and teacher_forcing_ratio > 0.0
        predictions: list[Tensor] = []
        for t in range(self.output_length):
            h, c = self.cell(step_input, (h, c))
            prediction: Tensor = self.readout(h)
            predictions.append(prediction)
            step_input = prediction
            if forcing and target_sequence is not None:
                use_truth = torch.rand(batch, 1, device=embedding.device) < teacher_forcing_ratio
                step_input = torch.where(use_truth, target_sequence[:, t : t + 1], prediction)
        return torch.cat(predictions, dim=-1)
