"""RLRun's eval: the validation fraction (`split`), the test fraction (`test`) and the CEL rule
that leaves bars for training, as `tradewind validate` and the CRD see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tradewind.api import ManifestError, load_resources
from tradewind.api.crd import build_crd
from tradewind.api.resources import RLRun
from tradewind.api.rl import EvalSpec


def _manifest(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": {"name": "split"},
        "spec": {"agents": [{"name": "ppo", "algorithm": "ppo"}], "eval": evaluation},
    }


def test_validation_and_test_fractions_default_to_a_fifth_each() -> None:
    evaluation = EvalSpec()
    assert (evaluation.split, evaluation.test) == (0.2, 0.2)


@pytest.mark.parametrize(
    ("evaluation", "problem"),
    [
        ({"split": 0.5, "test": 0.4}, "spec.eval: split + test must leave at least 20%"),
        ({"test": 0}, "spec.eval.test: Input should be greater than 0"),
        ({"test": 1}, "spec.eval.test: Input should be less than 1"),
    ],
)
def test_fractions_that_leave_too_little_for_training_are_refused(
    evaluation: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_manifest(evaluation)))
    with pytest.raises(ManifestError) as info:
        load_resources(path)
    assert len(info.value.problems) == 1
    assert problem in info.value.problems[0]


def test_split_plus_test_of_eighty_percent_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_manifest({"split": 0.4, "test": 0.4})))
    (run,) = load_resources(path)
    assert isinstance(run, RLRun) and run.spec.eval.test == 0.4


def test_the_crd_carries_the_rule_and_documents_both_fields() -> None:
    crd = build_crd(RLRun)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    evaluation = schema["properties"]["spec"]["properties"]["eval"]
    rule = evaluation["x-kubernetes-validations"][0]["rule"]
    read = "(has(self.split) ? self.split : 0.2) + (has(self.test) ? self.test : 0.2)"
    assert rule == f"{read} <= 0.8"
    assert "validation" in evaluation["properties"]["split"]["description"]
    assert "final test" in evaluation["properties"]["test"]["description"]
