"""A run's own checkpoint prefix and MLflow run: by uid under the operator, by name locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradewind.api import RLRun, TrainingRun
from tradewind.trainer.entrypoint import checkpoint_uri
from tradewind.trainer.tracking import TAG_UID, Tracker


def _run(kind: str = "TrainingRun", **checkpoint: str) -> TrainingRun | RLRun:
    spec: dict[str, object] = {"checkpoint": checkpoint}
    if kind == "RLRun":
        spec["agents"] = [{"name": "ppo", "algorithm": "ppo"}]
    model = TrainingRun if kind == "TrainingRun" else RLRun
    return model.model_validate(
        {
            "apiVersion": "tradewind.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "r", "namespace": "team-a"},
            "spec": spec,
        }
    )


@pytest.mark.parametrize("kind", ["TrainingRun", "RLRun"])
def test_under_the_operator_the_prefix_holds_namespace_name_and_uid(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEWIND_CHECKPOINT_URI", "s3://tradewind/")
    monkeypatch.setenv("TRADEWIND_RUN_UID", "uid-1")
    assert checkpoint_uri(_run(kind), tmp_path) == "s3://tradewind/team-a/r/uid-1"
    monkeypatch.setenv("TRADEWIND_RUN_UID", "uid-2")  # the same name, re-created
    assert checkpoint_uri(_run(kind), tmp_path) == "s3://tradewind/team-a/r/uid-2"


def test_an_explicit_storage_gets_the_uid_in_a_cluster_and_a_local_run_resumes_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEWIND_RUN_UID", "uid-1")
    monkeypatch.setenv("TRADEWIND_CHECKPOINT_URI", "s3://tradewind")
    explicit = _run(storage="s3://tradewind/team-a/mine/")
    assert checkpoint_uri(explicit, tmp_path) == "s3://tradewind/team-a/mine/uid-1"
    monkeypatch.delenv("TRADEWIND_RUN_UID")
    assert checkpoint_uri(explicit, tmp_path) == "s3://tradewind/team-a/mine"
    assert checkpoint_uri(_run(), tmp_path) == "s3://tradewind/team-a/r"
    monkeypatch.delenv("TRADEWIND_CHECKPOINT_URI")
    assert checkpoint_uri(_run(), tmp_path) == (tmp_path / "checkpoints" / "r").as_uri()


def test_an_mlflow_run_of_another_uid_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    mlflow.set_tracking_uri(uri)
    tags = {"tradewind.name": "r"}

    def start(uid: str, resume: str | None) -> str:
        monkeypatch.setenv("TRADEWIND_RUN_UID", uid)
        tracker = Tracker(enabled=True)
        tracker.start("e", "r", tags, {}, resume_run_id=resume)
        tracker.end()
        assert tracker.run_id is not None
        return tracker.run_id

    first = start("uid-1", None)
    assert mlflow.get_run(first).data.tags[TAG_UID] == "uid-1"
    assert start("uid-1", first) == first  # a restarted attempt continues its run
    other = start("uid-2", first)  # a re-created run with the old run's state
    assert other != first
    assert mlflow.get_run(other).data.tags[TAG_UID] == "uid-2"
