"""Retraining evaluations of a TrainingRun: time-series cross-validation (expanding window,
`evaluation.cvSplits`) and walk-forward analysis (rolling window of
`evaluation.walkForwardWindow` bars, stepping `walkForwardStep`).

Each fold trains a fresh model on its past and evaluates it on the block that follows, with
the trading backtest beside buy-and-hold and random. Folds are cut on the timeline of sample
bars of the main split's training and validation parts (the main test split is never read).
Within a fold: its validation block is the end of its own training period (the share
`split.validation` has of the non-test data), the fit is what comes before it, and the fit,
validation and test blocks are each `predictionHorizon + 1 + split.embargo` bars apart; the
normaliser is refitted on the fit's rows. So early stopping, schedulers, curriculum and the
best checkpoint read the fold's validation block, and nothing but the reported figures reads
its test block.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tradewind.api.resources import TrainingRun
from tradewind.api.training import TrainingData
from tradewind.significance import METRIC_KEYS, sharpe_stats
from tradewind.trainer import backtest as bt
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.data.dataset import (
    SupervisedDataset,
    SupervisedSplit,
    dataset_from_splits,
    purge_gap,
)
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.windows import (
    Fold,
    SplitIndices,
    expanding_window_folds,
    walk_forward_folds,
)
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.evaluation import bars_per_year, max_drawdown
from tradewind.trainer.storage import LocalStore
from tradewind.trainer.tracking import Tracker

POOLED = "pooled"
"""The `fold` of the last row of a folds table: all folds' test blocks together."""

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


def pool_bars(data: SupervisedDataset) -> np.ndarray:
    """The distinct sample bars folds are cut on: the main split's training and validation
    parts."""
    return np.unique(np.concatenate([data.train.timestamps, data.validation.timestamps]))


def carve_validation(train: np.ndarray, spec: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) positions of a fold's training period: validation is its last share
    `split.validation / (1 - split.test)` (as in the main split), the fit ends
    `purge_gap` positions before it. No validation when `split.validation` is 0."""
    share = spec.split.validation / (1.0 - spec.split.test)
    n_val = round(len(train) * share)
    if n_val == 0:
        return train, train[:0]
    n_fit = len(train) - n_val - purge_gap(spec)
    if n_fit < 1:
        raise DataError(
            f"a fold's {len(train)} training bars leave no fit after its validation block of "
            f"{n_val} bars and the purge gap of {purge_gap(spec)} (predictionHorizon + 1 + "
            "split.embargo): use a larger evaluation.walkForwardWindow, fewer cvSplits or a "
            "smaller data.split.validation"
        )
    return train[:n_fit], train[-n_val:]


def fold_datasets(
    data: SupervisedDataset, spec: TrainingData, folds: Iterator[Fold]
) -> Iterator[tuple[Fold, SupervisedDataset, np.ndarray]]:
    """Per fold: its dataset (fit, validation carved from the fold's training period, and
    test = the fold's block), re-normalised on the fit's rows; and the pool's bars."""
    if data.samples is None:
        raise ValueError("folds need a dataset built from a feature table (build_dataset)")
    samples = data.samples
    bars = pool_bars(data)
    for fold in folds:
        fit, validation = carve_validation(fold.train, spec)
        blocks = (bars[fit], bars[validation], bars[fold.test])
        splits = [
            SplitIndices(*(np.flatnonzero(np.isin(times, block)) for block in blocks))
            for times in samples.times
        ]
        if any(s.train.size for s in splits) and any(s.test.size for s in splits):
            yield fold, dataset_from_splits(samples, splits, spec), bars


def evaluate_folds(
    run: TrainingRun, data: SupervisedDataset, env: DistEnv
) -> dict[str, list[dict[str, Any]]]:
    """Cross-validation and walk-forward tables, as the run's evaluation spec asks."""
    ev = run.spec.evaluation
    gap = purge_gap(run.spec.data)
    n_bars = len(pool_bars(data))
    tables: dict[str, list[dict[str, Any]]] = {}
    if ev.cv_splits:
        tables["cross_validation"] = _run_folds(
            run, data, env, expanding_window_folds(n_bars, ev.cv_splits, gap)
        )
    if ev.walk_forward_window:
        folds = walk_forward_folds(n_bars, ev.walk_forward_window, ev.walk_forward_step, gap)
        tables["walk_forward_retrained"] = _run_folds(run, data, env, folds)
    return tables


METRIC_PREFIXES = {"cross_validation": "cv", "walk_forward_retrained": "walk_forward"}
"""The prefix of a folds table's pooled figures among the run's metrics."""


def pooled_metrics(tables: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Each table's pooled row as run metrics (`cv_accuracy`, `cv_accuracy_std`, `cv_return`,
    `cv_max_drawdown`, `cv_win_rate`, `cv_sharpe` with its interval, PSR and the rest of its
    statistics, `cv_sharpe_std`;
    `walk_forward_*` alike): figures on the training and validation bars only, so a Sweep
    may select on them and still report the test split untouched."""
    metrics: dict[str, float] = {}
    for name, rows in tables.items():
        pooled = next((r for r in rows if r["fold"] == POOLED), None)
        if pooled is None:
            continue
        head = METRIC_PREFIXES[name]
        metrics |= {
            f"{head}_accuracy": pooled["test_accuracy"],
            f"{head}_accuracy_std": pooled["test_accuracy_std"],
            f"{head}_return": pooled["model_return"],
            f"{head}_max_drawdown": pooled["model_max_drawdown"],
            f"{head}_win_rate": pooled["model_win_rate"],
            f"{head}_sharpe_std": pooled["model_sharpe_std"],
            f"{head}_buy_and_hold_return": pooled["buy_and_hold_return"],
            **{f"{head}_{k}": pooled[f"model_{k}"] for k in METRIC_KEYS},
        }
    return metrics


def _run_folds(
    run: TrainingRun, data: SupervisedDataset, env: DistEnv, folds: Iterator[Fold]
) -> list[dict[str, Any]]:
    """One row per fold, then the POOLED row: every fold's out-of-sample periods together."""
    from tradewind.trainer.supervised import SupervisedTrainer

    rows, oos_returns, horizon = [], [], run.spec.data.prediction_horizon
    for i, (fold, fold_data, bars) in enumerate(fold_datasets(data, run.spec.data, folds)):
        with tempfile.TemporaryDirectory(prefix="tradewind-fold-") as tmp:
            checkpointer = Checkpointer(LocalStore(Path(tmp)), keep_last=1)
            trainer = SupervisedTrainer(
                run, env, checkpointer, Tracker(enabled=False), data=fold_data
            )
            result = trainer.fit()
            predicted = trainer.predict(fold_data.test)[0].argmax(-1)
        cost = bt.cost_of(run.spec.evaluation)
        oos_returns.append(
            bt.strategy_equity(predicted, fold_data.test, horizon, cost, run.spec.seed)["model"]
        )
        model, hold, rand = (result.backtest[k] for k in ("model", "buy_and_hold", "random"))
        rows.append(
            {
                "fold": i,
                "train_from": str(bars[fold.train[0]])[:10],
                "test_from": str(bars[fold.test[0]])[:10],
                "test_to": str(bars[fold.test[-1]])[:10],
                "test_accuracy": result.metrics.get("test_accuracy", float("nan")),
                "model_return": model["total_return"],
                **{f"model_{k}": model[k] for k in (*bt.SHARPE_KEYS, *bt.RISK_KEYS)},
                "buy_and_hold_return": hold["total_return"],
                "random_return": rand["total_return"],
            }
        )
    if rows:
        rows.append(_pooled_row(rows, oos_returns, data, horizon))
    return rows


def _pooled_row(
    rows: list[dict[str, Any]], returns: list[np.ndarray], data: SupervisedDataset, horizon: int
) -> dict[str, Any]:
    """The folds' test blocks as one out-of-sample record: compounded return and the Sharpe
    ratio of all their periods, with its interval and PSR (the figure to judge the folds by;
    one fold's Sharpe on a short block says little) and the worst drawdown of the folds'
    periods compounded in turn; the folds' mean accuracy and win rate, and the spread (std)
    of accuracy and Sharpe ratio from fold to fold."""
    periods = np.concatenate(returns)
    stats = sharpe_stats(periods, bars_per_year(pool_bars(data)) / horizon)
    return {
        "fold": POOLED,
        "train_from": rows[0]["train_from"],
        "test_from": rows[0]["test_from"],
        "test_to": rows[-1]["test_to"],
        "test_accuracy": float(np.mean([r["test_accuracy"] for r in rows])),
        "test_accuracy_std": float(np.std([r["test_accuracy"] for r in rows])),
        "model_sharpe_std": float(np.std([r["model_sharpe"] for r in rows])),
        "model_return": float(np.prod(1.0 + periods) - 1.0),
        **stats.as_metrics("model"),
        "model_max_drawdown": max_drawdown(periods),
        "model_win_rate": float(np.mean([r["model_win_rate"] for r in rows])),
        "buy_and_hold_return": float(np.prod([1 + r["buy_and_hold_return"] for r in rows]) - 1),
        "random_return": float(np.prod([1 + r["random_return"] for r in rows]) - 1),
    }
