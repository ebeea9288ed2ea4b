"""A tiny TrainingRun that trains in about a second: two synthetic symbols of 600 bars (about
770 training windows of 10 bars) and a hybrid model of a few thousand parameters.

Shared by the trainer's unit tests (tests/unit/trainer/conftest.py), the two-rank torchrun
test, test_node_loop's Sweep template and the local Sweep tests' template."""

from __future__ import annotations

from typing import Any

BATCH_SIZE = 64


def tiny_spec(
    *, epochs: int = 3, deterministic: bool = True, num_bars: int = 600
) -> dict[str, Any]:
    """The spec; `deterministic=False` leaves `training.deterministic` to its default
    (false)."""
    training: dict[str, Any] = {"epochs": epochs, "batchSize": BATCH_SIZE}
    if deterministic:
        training["deterministic"] = True
    return {
        "seed": 7,
        "data": {
            "source": "synthetic",
            "synthetic": {"numSymbols": 2, "numBars": num_bars},
            "lookbackWindow": 10,
        },
        "model": {
            "cnn": {"layers": [{"outChannels": 8, "kernelSize": 3}], "attentionHeads": 2},
            "lstm": {"hiddenSize": 8, "numLayers": 1},
            "fusion": {"dim": 8},
        },
        "training": training,
        "tracking": {"systemMetrics": False},
    }


def tiny_run(name: str = "tiny", *, epochs: int = 3) -> dict[str, Any]:
    """The TrainingRun manifest named `name` (a fresh dict each call)."""
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": tiny_spec(epochs=epochs),
    }
