"""The same Optuna search over the quickstart TrainingRun with and without successive halving
(ASHA): total compute (epochs the trials ran) and best objective of each, one run.

    .venv/bin/python bench/sweep_pruning.py                      # ~20 min on 2 busy cores
    .venv/bin/python bench/sweep_pruning.py --trials 8 --epochs 6  # a quick look

Both searches are `examples/sweep-quickstart.yaml` (its TrainingRun, search space, objective
val_loss, parallelism 2) with the same seed, the same number of trials and the random sampler,
so they draw the same parameters: they differ only in the pruner. Each runs through
`tradewind run -f`'s code (real trial processes, MLflow, the pruner fed from MLflow).

Then the noise that decides whether the two best values differ: each search's best parameters
are trained again with `--seed-runs` other training seeds (the TrainingRun's `seed`: weights,
shuffling, dropout; same epochs, same objective: the final `val_loss` the trial logs), as a
grid Sweep over `seed` through the same code. The standard deviation across those seeds is
each best's seed noise; the verdict compares the gap between the two searches' bests with
2x the pooled seed noise. These trainings are not counted in either search's compute.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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


def _seed_sweep(
    base: dict[str, Any], name: str, params: dict[str, Any], seeds: list[int], args: Any
) -> Sweep:
    """A grid Sweep over the TrainingRun's `seed` with `params` fixed in the template."""
    template = _sweep(base, name, {"type": "none"}, args).spec.trial_spec(params)
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["template"]["spec"] = template
    spec |= {"maxTrials": len(seeds), "parallelism": min(spec.get("parallelism", 2), len(seeds)),
             "seed": args.seed, "sampler": "grid", "pruner": {"type": "none"},
             "searchSpace": {"seed": {"type": "grid", "values": seeds}}}  # fmt: skip
    sweep = parse_resource(doc, name)
    assert isinstance(sweep, Sweep)
    return sweep


def _seed_row(label: str, search_value: float, outcome: SweepOutcome) -> dict[str, Any]:
    """The objective of one best parameter set across training seeds."""
    runs = sorted(
        (t for t in outcome.study.trials if t.values),
        key=lambda t: t.params["seed"],
    )
    values = [t.value for t in runs]
    return {
        "search": label,
        "search_value": search_value,
        "seeds": [t.params["seed"] for t in runs],
        "val_loss": values,
        "mean": statistics.mean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) >= 2 else None,
        "epochs_run": outcome.steps_run,
        "wall_seconds": round(outcome.seconds, 1),
    }


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
    parser.add_argument("--seed-runs", type=int, default=3, help="training seeds per best")
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
    seeds_run: list[dict[str, Any]] = []
    if args.seed_runs >= 2:
        first = _sweep(base, "bench-seeds", {"type": "none"}, args).spec.template.spec.seed + 1
        seeds = list(range(first, first + args.seed_runs))
        for r, name in ((full, "bench-full-seeds"), (pruned, "bench-asha-seeds")):
            console.rule(f"{r['search']}: best parameters, training seeds {seeds}")
            sweep = _seed_sweep(base, name, r["best_params"], seeds, args)
            outcome = run_sweep(sweep, args.state_dir, console)
            seeds_run.append(_seed_row(r["search"], r["best_val_loss"], outcome))
    ratio = full["epochs_run"] / max(pruned["epochs_run"], 1)
    table = Table(title=f"{args.trials} trials of {args.epochs} epochs, seed {args.seed}")
    for col in ("search", "complete", "pruned", "failed", "epochs run", "best val_loss",
                "seed noise", "epoch noise", "wall s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "search" else "right")
    sds = {s["search"]: s["sd"] for s in seeds_run}
    for r in rows:
        noise, sd = r["val_loss_noise"], sds.get(r["search"])
        cells = [str(r[k]) for k in ("complete", "pruned", "failed", "epochs_run")]
        cells += [f"{r['best_val_loss']:.4f}", "-" if sd is None else f"{sd:.4f}"]
        cells += ["-" if noise is None else f"{noise:.4f}"]
        table.add_row(r["search"], *cells, f"{r['wall_seconds']:.0f}")
    console.print(table)
    if seeds_run:
        seed_table = Table(title="each search's best parameters, other training seeds")
        for col in ("best of", "search's run", *(f"seed {x}" for x in seeds_run[0]["seeds"]),
                    "mean", "sd", "epochs"):  # fmt: skip
            seed_table.add_column(col, justify="left" if col == "best of" else "right")
        for s in seeds_run:
            cells = [f"{s['search_value']:.4f}", *(f"{v:.4f}" for v in s["val_loss"])]
            cells += [f"{s['mean']:.4f}", "-" if s["sd"] is None else f"{s['sd']:.4f}"]
            seed_table.add_row(s["search"], *cells, str(s["epochs_run"]))
        console.print(seed_table)
    gap = pruned["best_val_loss"] - full["best_val_loss"]
    verdict = _verdict(gap, seeds_run)
    console.print(f"compute: {ratio:.2f}x fewer epochs with ASHA (target >= 3x); best val_loss "
                  f"{gap:+.4f} vs no pruning; {verdict['text']}")  # fmt: skip
    result = {
        "config": {"sweep": str(args.sweep.relative_to(ROOT)), "trials": args.trials,
                   "epochs": args.epochs, "seed": args.seed, "sampler": "random",
                   "parallelism": base["spec"].get("parallelism", 2), "asha": asha,
                   "seed_runs": args.seed_runs},
        "machine": {"python": platform.python_version(), "cpu_count": _cpus()},
        "searches": rows,
        "seed_noise": seeds_run,
        "seed_noise_epochs_run": sum(s["epochs_run"] for s in seeds_run),
        "compute_ratio": round(ratio, 2),
        "best_val_loss_gap": gap,
        "verdict": verdict,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


def _verdict(gap: float, seeds_run: list[dict[str, Any]]) -> dict[str, Any]:
    """The gap between the two searches' best values against the seed noise: the pooled
    standard deviation of the two bests' objective across training seeds (equal counts, so
    the root mean square of the two). Within noise when |gap| <= 2 pooled sd."""
    sds = [s["sd"] for s in seeds_run if s["sd"] is not None]
    if len(sds) < 2:
        return {"seed_sd_pooled": None, "within_noise": None, "text": "no seed noise measured"}
    pooled = math.sqrt(sum(sd**2 for sd in sds) / len(sds))
    within = abs(gap) <= 2 * pooled
    full, pruned = seeds_run
    mean_gap = pruned["mean"] - full["mean"]
    text = (f"|gap| {abs(gap):.4f} = {abs(gap) / pooled:.2f}x the pooled seed sd {pooled:.4f}: "
            f"{'within' if within else 'NOT within'} noise (2 sd); across the other seeds "
            f"ASHA's best averages {mean_gap:+.4f} vs no pruning's")  # fmt: skip
    return {
        "seed_sd_pooled": pooled,
        "gap_in_sd": abs(gap) / pooled,
        "threshold": 2 * pooled,
        "within_noise": within,
        "seed_mean_gap": mean_gap,
        "text": text,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
