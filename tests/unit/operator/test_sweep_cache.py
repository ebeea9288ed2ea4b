"""A Sweep is parsed, and its study and sampler built, once per generation; a trial whose
child succeeded while MLflow cannot be reached is told later, not failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.operator.test_sweeps import Harness, _body
from tradewind.operator import sweep_reconcile
from tradewind.operator.sweep_reconcile import SweepCache, reconcile_sweep


def _cached(harness: Harness, cache: SweepCache) -> None:
    harness.last = reconcile_sweep(
        harness.body, harness.kube, harness.settings, harness.metrics, harness.last,
        harness.now, cache=cache,
    )  # fmt: skip


def test_the_sweep_is_parsed_and_its_sampler_built_once_per_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Any] = []
    real = sweep_reconcile.parse_sweep
    monkeypatch.setattr(sweep_reconcile, "parse_sweep", lambda b: parsed.append(1) or real(b))
    grid = {"type": "grid", "values": [1e-4, 1e-3, 1e-2]}
    h = Harness(
        tmp_path, _body(sampler="grid", searchSpace={"training.optimizer.learningRate": grid})
    )
    cache = SweepCache()
    for _ in range(3):
        _cached(h, cache)
    study = cache.study(lambda: pytest.fail("the study was loaded again"))
    sampler = study.sampler
    assert len(parsed) == 1 and len(h.children()) == 2
    h.body["metadata"]["generation"] = 2  # e.g. maxTrials raised
    h.body["spec"]["maxTrials"] = 5
    _cached(h, cache)
    _cached(h, cache)
    assert len(parsed) == 2
    assert cache.study(lambda: pytest.fail("loaded again")).sampler is not sampler


def test_an_invalid_sweep_is_not_parsed_again_on_every_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Any] = []
    real = sweep_reconcile.parse_sweep
    monkeypatch.setattr(sweep_reconcile, "parse_sweep", lambda b: parsed.append(1) or real(b))
    h = Harness(
        tmp_path, _body(searchSpace={"model.nope": {"type": "uniform", "low": 0, "high": 1}})
    )
    cache = SweepCache()
    for _ in range(3):
        _cached(h, cache)
    assert len(parsed) == 1 and h.last is not None and h.last.phase == "Failed"
    assert h.children() == []


def test_a_succeeded_child_is_told_once_mlflow_answers_again(tmp_path: Path) -> None:
    h = Harness(tmp_path, _body(maxTrials=2))
    h.reconcile()
    first = h.children()[0]
    h.kube.finish(first, "Succeeded")
    real = h.metrics.final_metrics

    def unreachable(*args: Any) -> dict[str, float]:
        raise ConnectionError("MLflow not called: circuit breaker open")

    h.metrics.final_metrics = unreachable  # type: ignore[method-assign]
    status = h.reconcile()
    assert status.trials.failed == 0 and status.trials.completed == 0
    h.metrics.final_metrics = real  # type: ignore[method-assign]
    h.metrics.runs[first] = {"val_loss": {1: 0.5}}
    status = h.reconcile()
    assert status.trials.completed == 1 and status.trials.failed == 0
