import pytest

from tests.corpus import EXAMPLES_DIR
from tradewind.api import Sweep, TrainingRun, load_resources
from tradewind.api.training import TrainingRunSpec


def _sweep() -> Sweep:
    (sweep,) = load_resources(EXAMPLES_DIR / "sweep-quickstart.yaml")
    assert isinstance(sweep, Sweep)
    return sweep


def test_trial_spec_applies_params_to_the_template() -> None:
    sweep = _sweep()
    spec = sweep.spec.trial_spec({"training.optimizer.learningRate": 0.003, "model.dropout": 0.25})
    model = TrainingRunSpec.model_validate(spec)
    assert model.training.optimizer.learning_rate == 0.003
    assert model.model.dropout == 0.25
    assert model.training.epochs == 6  # from the template, untouched


def test_template_is_typed_by_kind() -> None:
    sweep = _sweep()
    assert sweep.spec.template.kind == "TrainingRun"
    assert isinstance(sweep.spec.template.spec, TrainingRunSpec)


@pytest.mark.parametrize(
    ("param", "values"),
    [
        ({"type": "int", "low": 2, "high": 8}, [2, 8]),
        ({"type": "choice", "values": [16, 32]}, [16, 32]),
    ],
)
def test_parameter_sample_values(param: dict, values: list) -> None:
    from tradewind.api.sweep import Parameter

    assert Parameter.model_validate(param).sample_values() == values


def test_runs_are_not_sweeps() -> None:
    (run,) = load_resources(EXAMPLES_DIR / "trainingrun-quickstart.yaml")
    assert isinstance(run, TrainingRun)
