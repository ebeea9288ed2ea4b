"""Figures logged to MLflow at the end of a run: loss curves, confusion matrix, equity
curves against the baselines, an attention heatmap, and an RL ensemble's uncertainty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display in pods

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

CLASS_NAMES = ("Sell", "Hold", "Buy")


def loss_curves(history: Sequence[Mapping[str, float]]) -> Figure:
    """Training and validation loss per epoch, with validation accuracy on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [h["epoch"] for h in history]
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("val_accuracy" in h for h in history):
        acc = ax.twinx()
        acc.plot(
            epochs,
            [h.get("val_accuracy", np.nan) for h in history],
            ":",
            color="tab:green",
            label="val_accuracy",
        )
        acc.set_ylabel("validation accuracy")
        acc.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("Loss curves")
    fig.tight_layout()
    return fig


def confusion_matrix(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], classes: int = 3
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Blues")
    names = CLASS_NAMES if classes == 3 else tuple(str(i) for i in range(classes))
    ax.set_xticks(range(classes), names)
    ax.set_yticks(range(classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="black")
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    return fig


def equity_curves(
    returns: Mapping[str, npt.NDArray[np.float64]],
    title: str = "Equity: model vs buy-and-hold vs random",
    xlabel: str = "trade period (test)",
) -> Figure:
    """Compounded equity of each strategy's per-period returns (after costs)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, series in returns.items():
        ax.plot(np.cumprod(1.0 + series), label=name)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("equity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def attention_heatmap(weights: npt.NDArray[np.float32]) -> Figure:
    """Mean attention over a batch: [T, T] (query x key) or [T] (pooling over time)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    if weights.ndim == 1:
        ax.bar(range(len(weights)), weights)
        ax.set_xlabel("bar in window (oldest -> newest)")
        ax.set_ylabel("weight")
    else:
        image = ax.imshow(weights, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax)
        ax.set_xlabel("key bar")
        ax.set_ylabel("query bar")
    ax.set_title("Attention")
    fig.tight_layout()
    return fig


def ensemble_uncertainty(
    member_exposure: Mapping[str, npt.NDArray[np.float64]],
    ensemble_exposure: npt.NDArray[np.float64],
    uncertainty: npt.NDArray[np.float64],
) -> Figure:
    """An RL ensemble over an episode: each member's and the ensemble's net exposure (sum of
    target weights over symbols) per step, and below it the members' disagreement (standard
    deviation of their target weights, averaged over symbols)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(2, 1))
    for name, series in member_exposure.items():
        top.plot(series, linewidth=0.8, alpha=0.8, label=name)
    top.plot(ensemble_exposure, color="black", linewidth=1.4, label="ensemble")
    top.axhline(0.0, color="grey", linewidth=0.5)
    top.set_ylabel("net target (action units)")
    top.legend(loc="upper left", fontsize="small")
    top.set_title("Ensemble members and their disagreement")
    steps = np.arange(len(uncertainty))
    bottom.fill_between(steps, 0.0, uncertainty, color="tab:red", alpha=0.35, linewidth=0)
    bottom.plot(steps, uncertainty, color="tab:red", linewidth=0.8)
    bottom.set_ylabel("uncertainty (std)")
    bottom.set_xlabel("step (held-out bars)")
    fig.tight_layout()
    return fig
