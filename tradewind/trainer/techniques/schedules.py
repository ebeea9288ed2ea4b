"""Per-epoch schedules of dropout and the teacher-forcing ratio. Epochs count from 0."""

from __future__ import annotations


def dropout_at(epoch: int, total_epochs: int, initial: float, final: float) -> float:
    """Dropout rate at `epoch`: linear from `initial` at epoch 0 to `final` at the last
    epoch (`total_epochs` - 1), held at `final` after it."""
    if epoch < 0 or total_epochs < 1:
        raise ValueError(f"need epoch >= 0 and total_epochs >= 1, got {epoch}, {total_epochs}")
    progress = min(epoch / max(total_epochs - 1, 1), 1.0)
    return initial + (final - initial) * progress


def teacher_forcing_at(epoch: int, ratio: float, decay: float) -> float:
    """Teacher-forcing ratio at `epoch`: `ratio` decayed geometrically, ratio * decay**epoch."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return ratio * decay**epoch
