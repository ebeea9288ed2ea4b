"""A run's MLflow identity: written last, from its metadata; user tags cannot claim it."""

from __future__ import annotations

import pytest
import yaml

from tradewind.api import ManifestError, parse_resource
from tradewind.api.identity import PARENT_RUN_ANNOTATION, SWEEP_LABEL, TRIAL_LABEL, mlflow_tags


def _run(tags: dict[str, str], **metadata: object) -> dict[str, object]:
    with open("examples/trainingrun-quickstart.yaml") as f:
        doc = yaml.safe_load(f)
    doc["metadata"] |= metadata
    doc["spec"]["tracking"] = {"tags": tags}
    return doc


def test_identity_comes_from_metadata_and_is_written_after_the_users_tags() -> None:
    doc = _run(
        {"team": "rates", "mlflow.note.content": "first try"},
        namespace="team-a",
        labels={SWEEP_LABEL: "search", TRIAL_LABEL: "3"},
        annotations={PARENT_RUN_ANNOTATION: "abc123"},
    )
    tags = mlflow_tags(parse_resource(doc, "run.yaml"), **{"tradewind.role": "ppo"})
    assert tags == {
        "team": "rates",
        "mlflow.note.content": "first try",
        "tradewind.kind": "TrainingRun",
        "tradewind.name": "quickstart",
        "tradewind.namespace": "team-a",
        "tradewind.sweep": "search",
        "tradewind.trial": "3",
        "mlflow.parentRunId": "abc123",
        "tradewind.role": "ppo",
    }
    assert list(tags)[-1] == "tradewind.role"


def test_a_run_outside_a_sweep_has_no_sweep_tags() -> None:
    tags = mlflow_tags(parse_resource(_run({}), "run.yaml"))
    assert set(tags) == {"tradewind.kind", "tradewind.name", "tradewind.namespace"}


@pytest.mark.parametrize(
    "name", ["tradewind.name", "tradewind.checkpoint.latest", "mlflow.parentRunId", "mlflow.user"]
)
def test_reserved_tag_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ManifestError, match=r"spec\.tracking\.tags: tag names starting"):
        parse_resource(_run({name: "x"}), "run.yaml")
