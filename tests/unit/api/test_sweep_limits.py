"""Limits that keep one manifest from taking the operator or a pod down: a grid Sweep's size,
the cost of validating a Sweep, synthetic data's size."""

from __future__ import annotations

from typing import Any

import pytest

from tradewind.api import ManifestError, parse_resource
from tradewind.api import sweep as sweep_api
from tradewind.api.common import MAX_SYNTHETIC_BARS
from tradewind.api.sweep import MAX_GRID_POINTS, SweepSpec
from tradewind.api.training import TrainingRunSpec


def _sweep(search_space: dict[str, Any], sampler: str = "tpe") -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "sw", "namespace": "ns"},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": {"training": {"epochs": 2}}},
            "objective": {"metric": "val_loss"},
            "searchSpace": search_space,
            "sampler": sampler,
        },
    }


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_resource(doc)
    return caught.value.problems


def test_a_grid_over_the_cap_is_refused_naming_the_search_space_and_the_cap() -> None:
    grid = {"type": "grid", "values": list(range(1, 257))}
    space = {"training.batchSize": grid, "training.epochs": grid}  # 65536 points
    (problem,) = _problems(_sweep(space, "grid"))
    assert problem == (
        "<manifest>: spec.searchSpace: the grid has 65536 points (the product of the "
        f"parameters' numbers of values); at most {MAX_GRID_POINTS}: fewer values, or "
        "sampler random or tpe"
    )
    space["training.epochs"] = {"type": "grid", "values": list(range(1, 40))}  # 9984 points
    parse_resource(_sweep(space, "grid"))
    # the same values as choices are sampled, never enumerated: no cap
    choices = {path: {**p, "type": "choice"} for path, p in space.items()}
    parse_resource(_sweep(choices | {"training.epochs": {**grid, "type": "choice"}}))


def test_every_value_is_checked_against_its_field_but_few_against_the_whole_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = [round(0.001 * i, 3) for i in range(255)]
    space = {"model.dropout": {"type": "choice", "values": [*values[:200], 1.5, *values[200:]]}}
    (problem,) = _problems(_sweep(space))
    assert problem == (
        "<manifest>: spec.searchSpace[model.dropout]: the template rejects a value of this "
        "parameter: Input should be less than 1"
    )
    validated: list[Any] = []
    real = TrainingRunSpec.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[TrainingRunSpec], obj: Any, *args: Any, **kwargs: Any) -> Any:
        validated.append(obj)
        return real(cls, obj, *args, **kwargs)

    monkeypatch.setattr(TrainingRunSpec, "model_validate", classmethod(counting))
    space = {path: {"type": "choice", "values": values} for path in ("model.dropout",)}
    space["training.batchSize"] = {"type": "choice", "values": list(range(1, 257))}
    parse_resource(_sweep(space))
    assert len(validated) == 2 * sweep_api.WHOLE_SPEC_SAMPLES  # not once per value (512)


def test_cross_field_rules_still_see_the_sampled_values() -> None:
    # 2 x hiddenSize (bidirectional) must divide by the attention heads (8): 2 x 30 does not
    doc = _sweep({"model.lstm.hiddenSize": {"type": "int", "low": 30, "high": 64}})
    doc["spec"]["template"]["spec"]["model"] = {"lstm": {"attentionHeads": 8}}
    (problem,) = _problems(doc)
    assert "searchSpace[model.lstm.hiddenSize]" in problem and "divisible" in problem


def test_values_under_a_free_form_map_are_checked_by_the_whole_spec() -> None:
    doc = _sweep({"agents[ppo].hyperparameters.gamma": {"type": "uniform", "low": 0.9, "high": 2}})
    doc["spec"]["template"] = {
        "kind": "RLRun",
        "spec": {"agents": [{"name": "ppo", "algorithm": "ppo"}]},
    }
    (problem,) = _problems(doc)
    assert "searchSpace[agents[ppo].hyperparameters.gamma]" in problem


def test_synthetic_data_is_capped_naming_the_field_and_the_cap() -> None:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "big"},
        "spec": {"data": {"source": "synthetic",
                          "synthetic": {"numSymbols": 5000, "numBars": 50_000_000}}},
    }  # fmt: skip
    (problem,) = _problems(doc)
    assert problem == (
        f"<manifest>: spec.data.synthetic.numBars: numSymbols x numBars is at most "
        f"{MAX_SYNTHETIC_BARS} bars (e.g. 100 symbols x 200000 bars): the whole market is "
        "generated in memory"
    )
    doc["spec"]["data"]["synthetic"] = {"numSymbols": 5000}  # x the default 5000 bars
    assert len(_problems(doc)) == 1
    doc["spec"]["data"]["synthetic"] = {"numSymbols": 100, "numBars": 200_000}
    parse_resource(doc)


def test_the_grid_cap_holds_in_the_model_too() -> None:
    with pytest.raises(ValueError, match="at most 10000"):
        SweepSpec.model_validate(_sweep({
            "training.batchSize": {"type": "grid", "values": list(range(1, 101))},
            "training.epochs": {"type": "grid", "values": list(range(1, 102))},
        }, "grid")["spec"])  # fmt: skip
