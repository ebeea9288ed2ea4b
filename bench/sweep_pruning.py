"""The same Optuna search over the quickstart TrainingRun with and without successive halving
(ASHA): total compute (epochs the trials ran) and best objective of each, one run.

    .venv/bin/python bench/sweep_pruning.py                      # ~20 min on 2 busy cores
    .venv/bin/python bench/sweep_pruning.py --trials 8 --epochs 6  # a quick look

Both searches are `examples/sweep-quickstart.yaml` (its TrainingRun, search space, objective
val_loss, parallelism 2) with the same seed, the same number of trials and the random sampler,
so they draw the same parameters: they differ only in the pruner. Each runs through
`tradewind run -f`'s code (real trial processes, MLflow, the pruner fed from MLflow).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tradewind.api import Sweep, parse_resource  # noqa: E402
from tradewind.sweeps.local import STEPS_RUN_ATTR, SweepOutcome, run_sweep  # noqa: E402


def _sweep(base: dict[str, Any], name: str, pruner: dict[str, Any], args: Any) -> Sweep:
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["template"]["spec"]["training"]["epochs"] = args.epochs
    spec |= {"maxTrials": args.trials, "seed": args.seed, "sampler": "random", "pruner": pruner}
    sweep = parse_resource(doc, name)
    assert isinstance(sweep, Sweep)
    return sweep


def _noise(outcome: SweepOutcome) -> float | None:
    """Epoch-to-epoch standard deviation of val_loss over the last 4 epochs of the complete
    trials (mean over trials): how much the objective moves with no change of parameters."""
    spreads = []
    for t in outcome.study.trials:
        values = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        if t.values and len(values) >= 4:
            spreads.append(statistics.stdev(values[-4:]))
    return statistics.mean(spreads) if spreads else None


def _row(label: str, outcome: SweepOutcome) -> dict[str, Any]:
    trials = outcome.study.trials
    states = [t.state.name for t in trials]
    return {
        "search": label,
        "trials": len(trials),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_run": outcome.steps_run,
        "epochs_per_trial": [int(t.user_attrs.get(STEPS_RUN_ATTR, 0)) for t in trials],
        "best_val_loss": outcome.best_value,
        "best_params": outcome.best_params,
        "val_loss_noise": _noise(outcome),
        "wall_seconds": round(outcome.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", type=Path, default=ROOT / "examples/sweep-quickstart.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--reduction-factor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/tradewind-bench-sweep"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/sweep_pruning.json")
    args = parser.parse_args()
    console = Console()
    base = yaml.safe_load(args.sweep.read_text())
    shutil.rmtree(args.state_dir, ignore_errors=True)
    asha = {"type": "successive_halving", "minResource": 1,
            "reductionFactor": args.reduction_factor}  # fmt: skip
    rows = []
    for label, name, pruner in (
        ("no pruning", "bench-full", {"type": "none"}),
        ("ASHA", "bench-asha", asha),
    ):
        console.rule(label)
        rows.append(
            _row(label, run_sweep(_sweep(base, name, pruner, args), args.state_dir, console))
        )
    full, pruned = rows
    ratio = full["epochs_run"] / max(pruned["epochs_run"], 1)
    table = Table(title=f"{args.trials} trials of {args.epochs} epochs, seed {args.seed}")
    for col in ("search", "complete", "pruned", "failed", "epochs run", "best val_loss",
                "val_loss noise", "wall s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "search" else "right")
    for r in rows:
        noise = r["val_loss_noise"]
        cells = [str(r[k]) for k in ("complete", "pruned", "failed", "epochs_run")]
        cells += [f"{r['best_val_loss']:.4f}", f"{noise:.4f}" if noise is not None else "-"]
        table.add_row(r["search"], *cells, f"{r['wall_seconds']:.0f}")
    console.print(table)
    gap = pruned["best_val_loss"] - full["best_val_loss"]
    noise = full["val_loss_noise"]
    shown = "-" if noise is None else f"{noise:.4f}"
    console.print(f"compute: {ratio:.2f}x fewer epochs with ASHA (target >= 3x); best val_loss "
                  f"{gap:+.4f} vs no pruning (noise {shown})")  # fmt: skip
    result = {
        "config": {"sweep": str(args.sweep.relative_to(ROOT)), "trials": args.trials,
                   "epochs": args.epochs, "seed": args.seed, "sampler": "random",
                   "parallelism": base["spec"].get("parallelism", 2), "asha": asha},
        "machine": {"python": platform.python_version(), "cpu_count": _cpus()},
        "searches": rows,
        "compute_ratio": round(ratio, 2),
        "best_val_loss_gap": gap,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
