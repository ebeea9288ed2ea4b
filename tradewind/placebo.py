"""`tradewind placebo -f run.yaml`: the run's own pipeline on markets with a known answer.

For each placebo market (`tradewind.trainer.data.placebo`: a random walk and a bar-level
reversal where nothing is tradable at the next bar, and a planted edge that is), the
manifest's data is replaced by generated bars matched to it (same symbols, timestamps, first
prices and volatility), and the manifest runs as `tradewind run -f` would run it. Every
evaluation path it has is then judged: does it show an edge (PSR >= EDGE_PSR; for a Sweep's
best trial, its Deflated Sharpe Ratio)? A trustworthy pipeline shows one on the planted edge
and on no other market.

One short run has little power: a small model on a few years of bars can miss the planted
edge under one seed and find it under the next. With `seeds` > 1 each market is generated
and the manifest trained under that many seeds, and each path is judged once, on its
probabilities combined (Stouffer: `significance.combined_probability`), which is calibrated
as one run's is and gathers the evidence of all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tradewind.api import RLRun, Sweep, TrainingRun, dump_resource, parse_resource
from tradewind.api.common import DataSource
from tradewind.api.training import TrainingRunSpec
from tradewind.significance import SharpeStats, combined_probability

Resource = TrainingRun | RLRun | Sweep
Figures = dict[str, tuple[SharpeStats, float]]
"""Per evaluation path: its out-of-sample Sharpe statistics and the probability that judges
them (PSR; a search's best: its Deflated Sharpe Ratio)."""
EDGE_PSR = 0.95
"""A path shows an edge when the probability that its true Sharpe ratio is above zero (PSR,
or DSR for a search's best) is at least this."""
SKIPPED = "buy_and_hold"
"""Baselines, not evaluation paths."""


@dataclasses.dataclass(frozen=True)
class PathResult:
    """One evaluation path's figure on one market under one seed."""

    market: str
    path: str
    stats: SharpeStats | None
    """None when the path produced no Sharpe ratio."""
    probability: float
    """PSR, or the Deflated Sharpe Ratio for a search's best trial."""
    expected_edge: bool
    seed: int = 0
    """The market's seed (the run trained with its own seed plus the same offset)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One evaluation path on one market, judged on every seed's figure together."""

    market: str
    path: str
    runs: tuple[PathResult, ...]
    """The path's figure under each seed."""
    expected_edge: bool

    @property
    def probability(self) -> float:
        """The seeds' probabilities combined (one seed's as it is); NaN if a seed had none."""
        if any(r.stats is None for r in self.runs):
            return math.nan
        return combined_probability([r.probability for r in self.runs])

    @property
    def shows_edge(self) -> bool:
        return self.probability >= EDGE_PSR

    @property
    def ok(self) -> bool:
        return math.isfinite(self.probability) and self.shows_edge == self.expected_edge


def data_of(resource: Resource) -> DataSource:
    """The market data a resource trains on."""
    if isinstance(resource, TrainingRun):
        return resource.spec.data
    if isinstance(resource, RLRun):
        return resource.spec.environment.data
    template = resource.spec.template
    if isinstance(template.spec, TrainingRunSpec):
        return template.spec.data
    return template.spec.environment.data


def with_source(
    resource: Resource, source: str, market: str = "placebo", offset: int = 0
) -> Resource:
    """The resource with its data read from `source` (a `file://` URI) and no `symbols`,
    dates or synthetic settings left to filter it; it starts afresh (resumeFrom none), trains
    with its seed plus `offset`, and tracks to the experiment `<experiment>-placebo`, run
    `<name>-<market>` (`-seed<offset>` after it for an offset)."""
    document = yaml.safe_load(dump_resource(resource))
    spec = document["spec"]
    run_spec = resource.spec.template.spec if isinstance(resource, Sweep) else resource.spec
    if isinstance(resource, Sweep):
        spec = spec["template"]["spec"]
    data = spec["environment"]["data"] if "environment" in spec else spec.setdefault("data", {})
    for key in ("symbols", "start", "end", "synthetic"):
        data.pop(key, None)
    data["source"] = source
    spec.setdefault("checkpoint", {})["resumeFrom"] = "none"
    tracking = spec.setdefault("tracking", {})
    tracking["experiment"] = f"{tracking.get('experiment', 'tradewind')}-placebo"[:250]
    tracking["runName"] = f"{resource.metadata.name}-{market}"
    if offset:
        spec["seed"] = run_spec.seed + offset
        tracking["runName"] += f"-seed{offset}"
    placebo = parse_resource(document)
    assert isinstance(placebo, TrainingRun | RLRun | Sweep)
    return placebo


def reference_bars(resource: Resource, seed: int) -> Any:
    """The bars the resource would train on (after its symbol and date filters)."""
    from tradewind.trainer.data.sources import load_bars

    return load_bars(data_of(resource), synthetic_seed=seed)


def run_paths(resource: Resource, state_dir: Path, console: Console) -> Figures:
    """Run the resource here as `tradewind run -f` does and return each evaluation path's
    out-of-sample figures, by path name."""
    if isinstance(resource, TrainingRun):
        return _training_paths(resource, state_dir)
    if isinstance(resource, RLRun):
        return _rl_paths(resource, state_dir)
    return _sweep_paths(resource, state_dir, console)


def _training_paths(run: TrainingRun, state_dir: Path) -> Figures:
    from tradewind.trainer.entrypoint import train

    result = train(run, state_dir)
    return training_figures(result.backtest, result.folds or {})


def training_figures(
    backtest: dict[str, dict[str, float]], folds: dict[str, list[dict[str, Any]]]
) -> Figures:
    """A TrainingRun's paths: the model's test backtest, and each folds table's pooled
    figures as the run logs them (`cv_*`, `walk_forward_*`: what a Sweep may select on)."""
    from tradewind.trainer.folds import METRIC_PREFIXES, pooled_metrics

    paths = {"backtest": SharpeStats.from_metrics(backtest["model"])}
    metrics = pooled_metrics(folds)
    for name in folds:
        paths[name] = SharpeStats.from_metrics(metrics, METRIC_PREFIXES[name])
    return {k: (v, v.psr) for k, v in paths.items() if v is not None}


def _rl_paths(run: RLRun, state_dir: Path) -> Figures:
    from tradewind.trainer.rl.run import combine, train_one

    for index in range(len(run.spec.agents)):
        train_one(run, index, state_dir)
    paths = {}
    for row in combine(run, state_dir):
        stats = SharpeStats.from_metrics(row)
        if row["strategy"] != SKIPPED and stats is not None:
            paths[f"rl {row['strategy']}"] = (stats, stats.psr)
    return paths


def _sweep_paths(sweep: Sweep, state_dir: Path, console: Console) -> Figures:
    from tradewind.sweeps.local import run_sweep

    outcome = run_sweep(sweep, state_dir, console)
    best, deflated = outcome.best_sharpe, outcome.deflated_sharpe
    if best is None or deflated is None:
        return {}
    return {"sweep best (deflated)": (best, deflated)}


def check(
    resource: Resource,
    kinds: Sequence[str],
    state_dir: Path,
    console: Console,
    seed: int = 0,
    runner: Callable[[Resource, Path, Console], Figures] = run_paths,
    seeds: int = 1,
) -> list[Verdict]:
    """Every evaluation path of `resource` on each placebo market in `kinds`, under `seeds`
    seeds: market seeds `seed`, `seed` + 1, ..., the run's own seed shifted alike."""
    from tradewind.trainer.data.placebo import HAS_EDGE, PlaceboKind, placebo_bars

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    reference = reference_bars(resource, _seed_of(resource, seed))
    verdicts = []
    for kind in kinds:
        market: PlaceboKind = kind  # type: ignore[assignment]
        edge = HAS_EDGE[market]
        by_seed: list[tuple[int, dict[str, PathResult]]] = []
        for offset in range(seeds):
            market_seed = seed + offset
            label = f"placebo market {kind}" + (f", seed {market_seed}" if seeds > 1 else "")
            console.print(f"[bold]{label}[/]", highlight=False)
            with (
                _market_file(placebo_bars(reference, market, market_seed)) as path,
                _one_tracking_store(state_dir / "placebo"),
            ):
                placebo = with_source(resource, path.as_uri(), kind, offset)
                paths = runner(
                    placebo, state_dir / "placebo" / kind / f"seed-{market_seed}", console
                )
            found = {
                name: PathResult(kind, name, stats, probability, edge, market_seed)
                for name, (stats, probability) in paths.items()
            }
            by_seed.append((market_seed, found))
        names = dict.fromkeys(name for _, found in by_seed for name in found) or {"(no path)": None}
        for name in names:
            runs = tuple(
                found.get(name, PathResult(kind, name, None, math.nan, edge, market_seed))
                for market_seed, found in by_seed
            )
            verdicts.append(Verdict(kind, name, runs, edge))
    return verdicts


def _seed_of(resource: Resource, seed: int) -> int:
    spec = resource.spec
    return int(getattr(spec, "seed", seed))


@contextmanager
def _one_tracking_store(directory: Path) -> Iterator[None]:
    """Every market's runs in one MLflow store (STATE_DIR/placebo/mlflow.db) unless
    MLFLOW_TRACKING_URI names one."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(directory / 'mlflow.db').resolve()}"
    try:
        yield
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


@contextmanager
def _market_file(bars: Any) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tradewind-placebo-") as tmp:
        path = Path(tmp) / "bars.csv"
        bars.to_csv(path, index=False)
        yield path


def results_table(verdicts: Sequence[Verdict]) -> Table:
    """market | path | seed | Sharpe [95% interval] | PSR (DSR) | edge? | expected | verdict;
    a row per seed and, with several, the combined row that is judged."""
    seeds = max((len(v.runs) for v in verdicts), default=1)
    table = Table(
        title=f"Placebo check (edge = PSR >= {EDGE_PSR})",
        caption="PSR: P(true Sharpe > 0); a search's best is judged by its Deflated Sharpe Ratio"
        + ("; seeds combined by Stouffer's method" if seeds > 1 else ""),
    )
    columns = ["market", "path"] + (["seed"] if seeds > 1 else [])
    columns += ["Sharpe [95% CI]", "PSR/DSR", "edge", "expected", "verdict"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("market", "path") else "right")
    for v in verdicts:
        for r in v.runs if seeds > 1 else ():
            figure = "-" if r.stats is None else _sharpe_cell(r.stats)
            table.add_row(v.market, v.path, str(r.seed), figure, f"{r.probability:.3f}", "", "", "")
        if seeds > 1:
            cells = ["all"] + (
                [f"mean {_mean_sharpe(v):+.2f}"] if math.isfinite(v.probability) else ["-"]
            )
        else:
            (r,) = v.runs
            cells = ["-" if r.stats is None else _sharpe_cell(r.stats)]
        if not math.isfinite(v.probability):
            table.add_row(v.market, v.path, *cells, "-", "-", _yes(v.expected_edge), "NO FIGURE")
            continue
        verdict = "ok" if v.ok else ("FALSE EDGE" if v.shows_edge else "MISSED EDGE")
        table.add_row(
            v.market, v.path, *cells, f"{v.probability:.3f}", _yes(v.shows_edge),
            _yes(v.expected_edge), verdict,
        )  # fmt: skip
    return table


def _sharpe_cell(s: SharpeStats) -> str:
    return f"{s.sharpe:+.2f} [{s.ci_low:+.2f}, {s.ci_high:+.2f}]"


def _mean_sharpe(v: Verdict) -> float:
    return sum(r.stats.sharpe for r in v.runs if r.stats is not None) / len(v.runs)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
