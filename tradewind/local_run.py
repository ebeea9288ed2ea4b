"""`tradewind run -f`: a manifest on this machine, on embedded defaults (checkpoints and a
SQLite MLflow store under .tradewind/), with a progress bar and a summary at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tradewind.api import RLRun, TrainingRun, dump_resource


def run_training(run: TrainingRun, state_dir: Path, console: Console) -> dict[str, Any]:
    """Train in this process with a live progress bar; returns the result as a dict."""
    from tradewind.trainer.entrypoint import train

    epochs = run.spec.training.epochs
    columns = (
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(bar_width=20),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(run.metadata.name, total=epochs, metrics="")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            shown = "  ".join(
                f"{k}={metrics[k]:.4f}"
                for k in ("train_loss", "val_loss", "val_accuracy")
                if k in metrics
            )
            progress.update(task, completed=epoch, metrics=shown)

        result = train(run, state_dir, on_epoch=on_epoch)
        progress.update(
            task, completed=epochs if not result.stopped_early else progress.tasks[0].completed
        )
    return dict(result.__dict__)


def run_training_torchrun(
    run: TrainingRun, state_dir: Path, processes: int, console: Console
) -> dict[str, Any]:
    """Train with `torchrun --standalone` on this machine: `processes` ranks over gloo."""
    state_dir.mkdir(parents=True, exist_ok=True)
    manifest = state_dir / f"{run.metadata.name}.yaml"
    manifest.write_text(dump_resource(run))
    result_path = state_dir / f"{run.metadata.name}.result.json"
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tradewind.trainer.launch", "--standalone", "--nnodes=1",
            f"--nproc-per-node={processes}", "-m", "tradewind.trainer", "--config", str(manifest),
            "--state-dir", str(state_dir), "--result", str(result_path)]  # fmt: skip
    console.print(f"torchrun: {processes} processes (gloo)", highlight=False)
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        raise SystemExit(code)
    return dict(json.loads(result_path.read_text()))


def run_own_code(run: TrainingRun, state_dir: Path, console: Console) -> int:
    """A run's own code (`spec.entrypoint`) here: nodes x procsPerNode processes of torchrun
    --standalone with the variables a pod gets, checkpoints in a folder under `state_dir`
    (or `checkpoint.storage`), MLflow as the built-in trainer's; the code's exit code."""
    from tradewind.trainer import own_code

    state_dir.mkdir(parents=True, exist_ok=True)
    manifest = state_dir / f"{run.metadata.name}.yaml"
    manifest.write_text(dump_resource(run))
    processes = run.spec.nodes * run.spec.procs_per_node
    console.print(f"torchrun: {processes} processes of your code (gloo)", highlight=False)
    argv = own_code.local_argv(run, manifest, state_dir)
    return subprocess.run(argv, check=False).returncode


def print_summary(result: dict[str, Any], console: Console) -> None:
    """Final metrics, the backtest against baselines and the walk-forward table."""
    m = result["metrics"]
    reported, last = m.get("reported_epoch"), m.get("epoch")
    restored = None not in (reported, last) and reported != last
    console.print(
        f"\nvalidation accuracy {m.get('val_accuracy', float('nan')):.4f}   "
        f"test accuracy {m.get('test_accuracy', float('nan')):.4f}   "
        f"val_loss {m.get('val_loss', float('nan')):.4f}"
        + (f"   (the best epoch's weights: {reported:.0f} of {last:.0f})" if restored else "")
        + ("   (stopped early)" if result.get("stopped_early") else ""),
        highlight=False,
    )
    table = Table(title="Test-period backtest after costs (fills at the next bar)")
    columns = ("strategy", "return", SHARPE_HEADER, "PSR", "Sortino", "max DD", "win", "turnover")
    for col in columns:
        table.add_column(col, justify="right" if col != "strategy" else "left")
    for name, p in result["backtest"].items():
        cells = [f"{p['total_return']:+.2%}", sharpe_cell(p), f"{p['psr']:.2f}"]
        cells += [f"{p['sortino']:.2f}", f"{p['max_drawdown']:.2%}", f"{p['win_rate']:.2%}"]
        table.add_row(name, *cells, f"{p['turnover']:.2f}")
    console.print(table)
    wf = Table(title="Test split by walkForwardStep bars (the trained model, out of sample)")
    columns = ("period", "bars", "model", SHARPE_HEADER, "PSR", "max DD", "win", "buy & hold")
    for col in (*columns, "random"):
        wf.add_column(col, justify="right")
    for row in result["walk_forward"]:
        returns = (row[k] for k in ("model_return", "buy_and_hold_return", "random_return"))
        model, hold, rand = (f"{r:+.2%}" for r in returns)
        wf.add_row(
            str(row["period"]), f"{row['test_from']}..{row['test_to']}", model,
            sharpe_cell(row, "model_"), f"{row['model_psr']:.2f}",
            f"{row['model_max_drawdown']:.2%}", f"{row['model_win_rate']:.2%}", hold, rand,
        )  # fmt: skip
    console.print(wf)
    for name, rows in (result.get("folds") or {}).items():
        console.print(_folds_table(name, rows))
    console.print(
        f"checkpoint: {result.get('latest_checkpoint')}  (best: {result.get('best_checkpoint')})",
        highlight=False,
    )
    if result.get("mlflow_url"):
        console.print(f"MLflow run: {result['mlflow_url']}", highlight=False)
    elif result.get("mlflow_run_id"):
        store = result.get("mlflow_tracking_uri", "")
        console.print(
            f"MLflow run {result['mlflow_run_id']}; "
            f"browse with: mlflow ui --backend-store-uri {store}",
            highlight=False,
        )


SHARPE_HEADER = "Sharpe [95% CI]"
"""Every Sharpe ratio is shown with its stationary-bootstrap interval."""


def sharpe_cell(figures: dict[str, Any], prefix: str = "") -> str:
    """`1.23 [-0.40, 2.80]`: the annualised Sharpe ratio and its 95% interval."""
    sharpe, low, high = (
        figures[f"{prefix}{k}"] for k in ("sharpe", "sharpe_ci_low", "sharpe_ci_high")
    )
    return f"{sharpe:.2f} [{low:.2f}, {high:.2f}]"


def _folds_table(name: str, rows: list[dict[str, Any]]) -> Table:
    titles = {
        "cross_validation": "Time-series cross-validation (retrained per fold)",
        "walk_forward_retrained": "Walk-forward analysis (retrained per window)",
    }
    title = titles.get(name, name)
    table = Table(
        title=title,
        caption="pooled: every fold's test block as one record; ± the spread (std) over folds",
    )
    columns = ("fold", "test period", "accuracy", "model", SHARPE_HEADER, "PSR", "max DD",
               "win rate", "buy & hold", "random")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        spread = "test_accuracy_std" in r
        table.add_row(
            str(r["fold"]),
            f"{r['test_from']}..{r['test_to']}",
            f"{r['test_accuracy']:.3f}" + (f" ± {r['test_accuracy_std']:.3f}" if spread else ""),
            f"{r['model_return']:+.2%}",
            sharpe_cell(r, "model_") + (f" ± {r['model_sharpe_std']:.2f}" if spread else ""),
            f"{r['model_psr']:.2f}",
            f"{r['model_max_drawdown']:.1%}",
            f"{r['model_win_rate']:.1%}" + (" (mean)" if spread else ""),
            f"{r['buy_and_hold_return']:+.2%}",
            f"{r['random_return']:+.2%}",
        )
    return table


def print_tracking_folders(run: TrainingRun | RLRun, state_dir: Path, console: Console) -> None:
    """Where `tracking.tensorboard`'s event files and an offline `tracking.wandb` run's files
    are, as the commands that show or upload them."""
    tracking = run.spec.tracking
    folder = state_dir / "tensorboard"
    if tracking.tensorboard and folder.is_dir():
        console.print(
            f"TensorBoard: tensorboard --logdir {folder}  (also in the MLflow run, tensorboard/)",
            highlight=False,
        )
    folder = state_dir / "wandb"
    if tracking.wandb is not None and tracking.wandb.mode == "offline" and folder.is_dir():
        console.print(
            f"W&B (offline): wandb sync {folder}/*/wandb/offline-run-*  (also in the MLflow run,"
            " wandb/)",
            highlight=False,
        )


def run_rl(run: RLRun, state_dir: Path, console: Console) -> list[dict[str, Any]]:
    """Train every agent here, one after the other (resuming any that has checkpoints), then
    evaluate them, the ensemble and buy-and-hold on the held-out bars."""
    from tradewind.trainer.rl.run import combine, train_one

    for index, agent in enumerate(run.spec.agents):
        console.print(
            f"agent {agent.name} ({agent.algorithm}): {run.spec.total_timesteps} timesteps",
            highlight=False,
        )
        train_one(run, index, state_dir, progress_bar=True)
    rows = combine(run, state_dir)
    table = Table(title="Test market (never used to choose a checkpoint), after costs")
    for col in ("strategy", "return", SHARPE_HEADER, "PSR", "max DD", "turnover"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        cells = (f"{r['total_return']:+.2%}", sharpe_cell(r), f"{r['psr']:.2f}")
        table.add_row(r["strategy"], *cells, f"{r['max_drawdown']:.2%}", f"{r['turnover']:.3f}")
    console.print(table)
    return rows


def with_overrides(run: TrainingRun, nodes: int | None, procs_per_node: int | None) -> TrainingRun:
    data = yaml.safe_load(dump_resource(run))
    if nodes is not None:
        data["spec"]["nodes"] = nodes
    if procs_per_node is not None:
        data["spec"]["procsPerNode"] = procs_per_node
    return TrainingRun.model_validate(data)
