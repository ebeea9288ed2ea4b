from pathlib import Path

import pytest
import yaml

from tests.corpus import EXAMPLES_DIR, example_paths
from tradewind.api import dump_resource, load_resources, parse_resource

EXAMPLES = example_paths()


def test_there_is_an_example_of_each_kind() -> None:
    kinds = {r.kind for p in EXAMPLES for r in load_resources(p)}
    assert kinds == {"TrainingRun", "RLRun", "Sweep"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips_yaml_model_yaml(path: Path) -> None:
    original = yaml.safe_load(path.read_text())
    (resource,) = load_resources(path)
    # As written: dumping what was set gives the same document back.
    as_written = yaml.safe_load(dump_resource(resource))
    assert as_written == _dates_as_str(original)
    # With every default filled in: parsing it again gives an equal model.
    full = yaml.safe_load(dump_resource(resource, full=True))
    assert parse_resource(full) == resource


def _dates_as_str(doc: object) -> object:
    """YAML reads 2018-01-01 as a date; the models write it back as a string."""
    if isinstance(doc, dict):
        return {k: _dates_as_str(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_dates_as_str(v) for v in doc]
    if hasattr(doc, "isoformat"):
        return doc.isoformat()
    return doc


def test_quickstart_defaults_are_filled_in() -> None:
    (run,) = load_resources(EXAMPLES_DIR / "trainingrun-quickstart.yaml")
    assert run.spec.model.type == "hybrid"
    assert run.spec.training.optimizer.name == "adamw"
    assert run.spec.nodes == 1
    assert run.spec.data.features[0] == "returns"
