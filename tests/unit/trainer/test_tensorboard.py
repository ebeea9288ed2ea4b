"""`tracking.tensorboard`: the metrics and figures a run logs to MLflow are TensorBoard event
files too (the built-in trainers; own code writes its own to $TRADEWIND_TENSORBOARD_DIR), in
the state dir and in the MLflow run under `tensorboard/`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.unit.trainer.test_rl_tracking import tiny_rlrun, train_and_combine
from tradewind.api import TrainingRun, parse_resource
from tradewind.trainer import entrypoint


def events(folder: Path) -> EventAccumulator:
    """What TensorBoard reads from the event files in `folder`."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    read = events(folder)
    return {tag: {e.step: e.value for e in read.Scalars(tag)} for tag in read.Tags()["scalars"]}


def graph_ops(folder: Path) -> set[str]:
    """The op types of the model graph in the event files (empty without one)."""
    read = events(folder)
    return {node.op for node in read.Graph().node} if read.Tags()["graph"] else set()


def logged_files(run_id: str) -> list[str]:
    client = MlflowClient()
    return [f.path for f in client.list_artifacts(run_id, "tensorboard")]


@pytest.mark.parametrize("wanted", [True, False])
def test_a_training_run_writes_its_metrics_and_figures_as_event_files(
    local_tracking: Path, tiny_manifest: Callable[..., dict[str, Any]], wanted: bool
) -> None:
    manifest = tiny_manifest({"training": {"epochs": 2}, "tracking": {"tensorboard": wanted}})
    run = parse_resource(manifest)
    assert isinstance(run, TrainingRun)
    folder = local_tracking / "tensorboard" / run.metadata.name
    if wanted:  # an earlier run's file in the folder is not this run's to log
        folder.mkdir(parents=True)
        (folder / "earlier-run.txt").write_text("not this run's")
    result = entrypoint.train(run, local_tracking)
    assert result.mlflow_run_id is not None
    if not wanted:
        assert not folder.exists() and logged_files(result.mlflow_run_id) == []
        return
    logged = scalars(folder)
    history = MlflowClient().get_metric_history(result.mlflow_run_id, "val_loss")
    assert logged["val_loss"] == pytest.approx({m.step: m.value for m in history})
    assert sorted(logged["val_loss"]) == [1, 2]
    assert "backtest_sharpe" in logged
    assert events(folder).Tags()["images"]  # the figures MLflow got
    # and each epoch's attention on the validation windows, for TensorBoard's step slider
    assert [i.step for i in events(folder).Images("attention_validation")] == [1, 2]
    assert "aten::linear" in graph_ops(folder)  # the model's graph, traced
    files = logged_files(result.mlflow_run_id)
    assert files and all(f.startswith("tensorboard/events.out.tfevents.") for f in files), files


def test_each_rl_agent_and_the_ensemble_get_their_own_event_files(local_tracking: Path) -> None:
    manifest = tiny_rlrun("boarded", "rl-tensorboard").model_dump(mode="json", by_alias=True)
    manifest["spec"]["tracking"]["tensorboard"] = True
    run = parse_resource(manifest)
    train_and_combine(run, local_tracking)
    folders = sorted(p.name for p in (local_tracking / "tensorboard").iterdir())
    agents = [f"boarded-{a.name}" for a in run.spec.agents]
    assert folders == sorted([*agents, "boarded-combine"])
    assert "eval_mean_reward" in scalars(local_tracking / "tensorboard" / agents[0])
    for agent in agents:  # each agent's policy network, as the guide logs the model's
        assert "aten::linear" in graph_ops(local_tracking / "tensorboard" / agent)
    combined = scalars(local_tracking / "tensorboard" / "boarded-combine")
    assert any(k.startswith("ensemble_") for k in combined)


WRITE_EVENTS = (
    "import os; from torch.utils.tensorboard import SummaryWriter; "
    "w = SummaryWriter(os.environ['TRADEWIND_TENSORBOARD_DIR']); "
    "w.add_scalar('my_loss', 0.25, 7); w.close()"
)


def test_own_code_writes_to_its_folder_and_the_files_reach_the_mlflow_run(
    local_tracking: Path, own_code_run: Callable[..., dict[str, str]]
) -> None:
    env = own_code_run("own-tb", {"tensorboard": True}, WRITE_EVENTS)
    folder = Path(env["TRADEWIND_TENSORBOARD_DIR"])
    assert folder == (local_tracking / "tensorboard" / "own-tb").resolve()
    assert scalars(folder) == {"my_loss": {7: 0.25}}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert logged_files(env["MLFLOW_RUN_ID"])


def test_a_model_the_tracer_cannot_follow_costs_the_graph_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from tradewind.trainer.tracking import Tracker

    class DictOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> Any:
            return {"logits": self.linear(x)}  # no ModelOutput: nothing to trace

    tracker = Tracker(enabled=True, tensorboard_dir=tmp_path)
    model = DictOutput().train()
    tracker.graph(model, torch.zeros(2, 3))
    assert "could not trace the model's graph" in caplog.text
    assert model.training  # left as it was
