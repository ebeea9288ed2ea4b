"""NaN and infinities are refused by every float field with one line naming the field (a
NaN Sweep bound used to reach a CEL rule and end in a TypeError traceback)."""

import pytest
import yaml

from tradewind.api import ManifestError, load_resources

SWEEP = """
apiVersion: tradewind.dev/v1alpha1
kind: Sweep
metadata: {name: s}
spec:
  template: {kind: TrainingRun, spec: {}}
  objective: {metric: val_loss}
  searchSpace:
    model.dropout: {type: uniform, low: LOW, high: 0.3}
"""
RUN = """
apiVersion: tradewind.dev/v1alpha1
kind: TrainingRun
metadata: {name: r}
spec:
  training: {optimizer: {learningRate: VALUE}}
  evaluation: {transactionCost: VALUE}
"""


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_non_finite_sweep_bound_is_one_clear_problem(tmp_path, value: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP.replace("LOW", value))
    with pytest.raises(ManifestError) as caught:
        load_resources(path)
    (problem,) = caught.value.problems
    assert "spec.searchSpace[model.dropout].low" in problem and "finite number" in problem


def test_non_finite_floats_are_refused_field_by_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.yaml"
    path.write_text(RUN.replace("VALUE", ".nan"))
    assert yaml.safe_load(path.read_text())["spec"]["evaluation"]["transactionCost"] != 0
    with pytest.raises(ManifestError) as caught:
        load_resources(path)
    text = " ".join(caught.value.problems)
    assert "spec.training.optimizer.learningRate" in text and "finite number" in text
