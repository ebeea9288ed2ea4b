"""A Sweep trial's identity reaches its trainer through the ConfigMap: its labels and the
parent-run annotation, not kubectl's copy of the manifest."""

from __future__ import annotations

import yaml

from tradewind.api import TrainingRun, parse_resource
from tradewind.api.identity import PARENT_RUN_ANNOTATION, SWEEP_LABEL, TRIAL_LABEL, mlflow_tags
from tradewind.operator import builders

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def test_the_trainer_reads_the_trials_identity_from_its_configmap() -> None:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {
            "name": "search-3",
            "namespace": "team-a",
            "labels": {SWEEP_LABEL: "search", TRIAL_LABEL: "3"},
            "annotations": {PARENT_RUN_ANNOTATION: "parent-9", LAST_APPLIED: "{...}"},
        },
        "spec": {},
    }
    run = parse_resource(doc)
    owner = {"apiVersion": "v", "kind": "TrainingRun", "name": "search-3", "uid": "u"}
    text = builders.build_configmap(run, 0, owner)["data"]["run.yaml"]
    assert LAST_APPLIED not in text
    in_pod = parse_resource(yaml.safe_load(text))
    assert isinstance(in_pod, TrainingRun)
    tags = mlflow_tags(in_pod)
    assert tags["tradewind.sweep"] == "search" and tags["tradewind.trial"] == "3"
    assert tags["mlflow.parentRunId"] == "parent-9"
