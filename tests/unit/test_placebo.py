"""`tradewind placebo`: the manifest's data is swapped for each placebo market, every path is
judged, and a false or missed edge fails the check. (The end-to-end runs of each evaluation
path on the placebo markets are in tests/unit/trainer/test_placebo_paths.py.)"""

from pathlib import Path

import pandas as pd
from rich.console import Console

from tests.tiny import tiny_run
from tradewind.api import RLRun, Sweep, TrainingRun, parse_resource
from tradewind.placebo import (
    EDGE_PSR,
    Figures,
    Resource,
    check,
    data_of,
    results_table,
    with_source,
)
from tradewind.significance import sharpe_stats


def _sweep() -> Sweep:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "s"},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": tiny_run()["spec"]},
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {"model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3}},
            "maxTrials": 2,
        },
    }
    sweep = parse_resource(doc)
    assert isinstance(sweep, Sweep)
    return sweep


def test_with_source_replaces_the_data_of_every_kind() -> None:
    run = parse_resource(tiny_run())
    assert isinstance(run, TrainingRun)
    rl = parse_resource(
        {
            "apiVersion": "tradewind.dev/v1alpha1",
            "kind": "RLRun",
            "metadata": {"name": "r"},
            "spec": {
                "environment": {"data": {"source": "stocks", "symbols": ["AAPL"]}},
                "agents": [{"name": "a", "algorithm": "ppo"}],
            },
        }
    )
    assert isinstance(rl, RLRun)
    for resource in (run, rl, _sweep()):
        swapped = with_source(resource, "file:///tmp/bars.csv")
        data = data_of(swapped)
        assert data.source == "file:///tmp/bars.csv"
        assert data.symbols == [] and data.synthetic is None
        assert data.interval == data_of(resource).interval
        assert data.features == data_of(resource).features


def test_each_market_is_run_on_its_own_bars_and_judged(tmp_path: Path) -> None:
    """A fake pipeline that 'finds' whatever momentum the bars it is given have: only the
    planted market shows an edge, and the check passes."""
    seen: list[pd.DataFrame] = []

    def runner(resource: Resource, state_dir: Path, console: Console) -> Figures:
        bars = pd.read_csv(data_of(resource).source.removeprefix("file://"))
        seen.append(bars)
        close = bars[bars["symbol"] == bars["symbol"].iloc[0]]["close"].to_numpy()
        step = pd.Series(close).pct_change().to_numpy()
        signal = pd.Series(step).rolling(10).sum().apply(lambda v: 1.0 if v > 0 else -1.0)
        earned = (signal.shift(2) * pd.Series(step)).dropna().to_numpy()
        stats = sharpe_stats(earned, 252)
        return {"backtest": (stats, stats.psr)}

    run = parse_resource(tiny_run() | {"spec": tiny_run()["spec"] | {"seed": 3}})
    assert isinstance(run, TrainingRun)
    kinds = ["random_walk", "reversal", "planted_edge"]
    # seeded: on a no-edge market, a 5% test shows a false edge for one seed in twenty
    results = check(run, kinds, tmp_path, Console(quiet=True), seed=3, runner=runner)
    assert [r.market for r in results] == kinds
    assert len({round(float(b["close"].iloc[-1]), 6) for b in seen}) == 3  # three markets
    assert [r.shows_edge for r in results] == [False, False, True]
    assert all(r.ok for r in results)
    assert results[2].probability >= EDGE_PSR


def test_a_false_edge_fails_the_check(tmp_path: Path) -> None:
    def always_edge(resource: Resource, state_dir: Path, console: Console) -> Figures:
        stats = sharpe_stats([0.01, 0.02, 0.015, 0.012] * 50, 252)
        return {"backtest": (stats, stats.psr)}

    run = parse_resource(tiny_run())
    assert isinstance(run, TrainingRun)
    (result,) = check(run, ["random_walk"], tmp_path, Console(quiet=True), runner=always_edge)
    assert result.shows_edge and not result.ok
    console = Console(record=True, width=160)
    console.print(results_table([result]))
    assert "FALSE EDGE" in console.export_text()


def test_several_seeds_vary_market_and_run_and_are_judged_together(tmp_path: Path) -> None:
    """Three seeds: each market is generated three ways and the run trained with three seeds;
    a weak edge that no single seed shows (PSR 0.9 each) is found on the seeds combined, and
    the no-edge markets' figures combine to no edge."""
    seen: list[tuple[str, int, float]] = []

    def runner(resource: Resource, state_dir: Path, console: Console) -> Figures:
        assert isinstance(resource, TrainingRun)
        bars = pd.read_csv(data_of(resource).source.removeprefix("file://"))
        market = resource.spec.tracking.run_name or ""
        seen.append((market, resource.spec.seed, float(bars["close"].iloc[-1])))
        stats = sharpe_stats([0.01, -0.005, 0.002] * 40, 252)
        return {"backtest": (stats, 0.9 if "planted" in market else 0.5)}

    run = parse_resource(tiny_run() | {"spec": tiny_run()["spec"] | {"seed": 3}})
    assert isinstance(run, TrainingRun)
    kinds = ["random_walk", "planted_edge"]
    verdicts = check(run, kinds, tmp_path, Console(quiet=True), seed=10, runner=runner, seeds=3)
    assert [s[1] for s in seen] == [3, 4, 5, 3, 4, 5]
    assert len({s[2] for s in seen}) == 6  # every market under every seed is its own
    names = ["tiny-random_walk", "tiny-random_walk-seed1", "tiny-random_walk-seed2"]
    assert [s[0] for s in seen[:3]] == names
    assert [(v.market, [r.seed for r in v.runs]) for v in verdicts] == [
        ("random_walk", [10, 11, 12]),
        ("planted_edge", [10, 11, 12]),
    ]
    assert not any(r.probability >= EDGE_PSR for v in verdicts for r in v.runs)
    assert [v.shows_edge for v in verdicts] == [False, True] and all(v.ok for v in verdicts)
    console = Console(record=True, width=200)
    console.print(results_table(verdicts))
    text = console.export_text()
    assert "Stouffer" in text and text.count("ok") == 2


def test_a_path_missing_under_one_seed_has_no_verdict(tmp_path: Path) -> None:
    calls = iter(range(10))

    def runner(resource: Resource, state_dir: Path, console: Console) -> Figures:
        stats = sharpe_stats([0.01, -0.005, 0.002] * 40, 252)
        figures = {"backtest": (stats, 0.5)}
        if next(calls) == 1:
            figures["walk_forward_retrained"] = (stats, 0.5)
        return figures

    run = parse_resource(tiny_run())
    assert isinstance(run, TrainingRun)
    verdicts = check(run, ["random_walk"], tmp_path, Console(quiet=True), runner=runner, seeds=2)
    assert [(v.path, v.ok) for v in verdicts] == [
        ("backtest", True),
        ("walk_forward_retrained", False),
    ]
    assert verdicts[1].runs[0].stats is None and verdicts[1].runs[1].stats is not None
    console = Console(record=True, width=200)
    console.print(results_table(verdicts))
    assert "NO FIGURE" in console.export_text()
