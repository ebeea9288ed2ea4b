"""Retraining evaluations of a TrainingRun: time-series cross-validation (expanding window,
`evaluation.cvSplits`) and walk-forward analysis (rolling window of
`evaluation.walkForwardWindow` bars, stepping `walkForwardStep`).

Each fold trains a fresh model on its past and evaluates it on the block that follows, with
the trading backtest beside buy-and-hold and random. Folds are cut on the timeline of sample
bars, with a gap of predictionHorizon bars so no target of the fit reaches into the test.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tradewind.api.resources import TrainingRun
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.data.dataset import SupervisedDataset, SupervisedSplit
from tradewind.trainer.data.windows import Fold, expanding_window_folds, walk_forward_folds
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.storage import LocalStore
from tradewind.trainer.tracking import Tracker

PER_SAMPLE = (
    "window_index",
    "labels",
    "forward_returns",
    "volatility",
    "regimes",
    "symbol_ids",
    "timestamps",
)
"""The SupervisedSplit fields with one entry per sample (the window view is shared)."""


def subset(split: SupervisedSplit, samples: np.ndarray) -> SupervisedSplit:
    """The samples at `samples` of a split (the window view stays shared)."""
    return dataclasses.replace(split, **{f: getattr(split, f)[samples] for f in PER_SAMPLE})


def concat(a: SupervisedSplit, b: SupervisedSplit) -> SupervisedSplit:
    return dataclasses.replace(
        a, **{f: np.concatenate([getattr(a, f), getattr(b, f)]) for f in PER_SAMPLE}
    )


def fold_datasets(
    data: SupervisedDataset, folds: Iterator[Fold]
) -> Iterator[tuple[Fold, SupervisedDataset, np.ndarray]]:
    """Per fold: the dataset whose train is the fold's past and whose validation and test are
    its future block, over the train+validation samples (the test split stays untouched)."""
    pool = concat(data.train, data.validation)
    bars = np.unique(pool.timestamps)
    position = np.searchsorted(bars, pool.timestamps)
    for fold in folds:
        fit = subset(pool, np.flatnonzero(np.isin(position, fold.train)))
        held = subset(pool, np.flatnonzero(np.isin(position, fold.test)))
        if len(fit) and len(held):
            yield fold, dataclasses.replace(data, train=fit, validation=held, test=held), bars


def evaluate_folds(
    run: TrainingRun, data: SupervisedDataset, env: DistEnv
) -> dict[str, list[dict[str, Any]]]:
    """Cross-validation and walk-forward tables, as the run's evaluation spec asks."""
    ev = run.spec.evaluation
    gap = run.spec.data.prediction_horizon
    n_bars = len(np.unique(np.concatenate([data.train.timestamps, data.validation.timestamps])))
    tables: dict[str, list[dict[str, Any]]] = {}
    if ev.cv_splits:
        tables["cross_validation"] = _run_folds(
            run, data, env, expanding_window_folds(n_bars, ev.cv_splits, gap)
        )
    if ev.walk_forward_window:
        folds = walk_forward_folds(n_bars, ev.walk_forward_window, ev.walk_forward_step, gap)
        tables["walk_forward_retrained"] = _run_folds(run, data, env, folds)
    return tables


def _run_folds(
    run: TrainingRun, data: SupervisedDataset, env: DistEnv, folds: Iterator[Fold]
) -> list[dict[str, Any]]:
    from tradewind.trainer.supervised import SupervisedTrainer

    rows = []
    for i, (fold, fold_data, bars) in enumerate(fold_datasets(data, folds)):
        with tempfile.TemporaryDirectory(prefix="tradewind-fold-") as tmp:
            checkpointer = Checkpointer(LocalStore(Path(tmp)), keep_last=1)
            trainer = SupervisedTrainer(
                run, env, checkpointer, Tracker(enabled=False), data=fold_data
            )
            result = trainer.fit()
        model, hold, rand = (result.backtest[k] for k in ("model", "buy_and_hold", "random"))
        rows.append(
            {
                "fold": i,
                "train_from": str(bars[fold.train[0]])[:10],
                "test_from": str(bars[fold.test[0]])[:10],
                "test_to": str(bars[fold.test[-1]])[:10],
                "test_accuracy": result.metrics.get("test_accuracy", float("nan")),
                "model_return": model["total_return"],
                "model_sharpe": model["sharpe"],
                "buy_and_hold_return": hold["total_return"],
                "random_return": rand["total_return"],
            }
        )
    return rows
