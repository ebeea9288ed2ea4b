"""`tracking.wandb`: a W&B run beside the MLflow run, with the same parameters, metrics and
figures, its id the MLflow run's. The real W&B client runs offline (no W&B server is
reachable here); the tests read the run file it writes, as `wandb sync` would upload it."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from wandb.proto import wandb_internal_pb2 as pb

from tests.unit.trainer.test_rl_tracking import tiny_rlrun, train_and_combine
from tradewind.api import TrainingRun, parse_resource
from tradewind.trainer import entrypoint

OFFLINE = {"project": "alpha", "mode": "offline"}


def records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file: a 7-byte header (`:W&B`, magic, version), then
    LevelDB-log records (CRC, length, type; full = 1 or first/middle/last = 2/3/4) in
    32 KiB blocks, a block's tail under 7 bytes left as padding."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    at, pending = 7, b""
    while at + 7 <= len(data):
        if block - at % block < 7:
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        pending += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            yield pb.Record.FromString(pending)
            pending = b""


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


class WandbFile:
    """What one offline W&B run recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = []
        self.history: dict[str, dict[int, Any]] = {}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.runs.append(record.run)
            elif kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in record.history.item}
                for key, value in row.items():
                    self.history.setdefault(key, {})[row["_step"]] = value

    @property
    def run(self) -> Any:
        return self.runs[0]

    def config(self) -> dict[str, Any]:
        return {_key(i): json.loads(i.value_json) for i in self.run.config.update}

    def images(self) -> set[str]:
        return {k.split("/")[0] for k, v in self.history.items() if "image-file" in v.values()}


def wandb_files(folder: Path) -> list[WandbFile]:
    return [WandbFile(p) for p in sorted(folder.rglob("offline-run-*/run-*.wandb"))]


def logged_files(run_id: str, folder: str = "wandb") -> list[str]:
    client = MlflowClient()
    found, pending = [], [folder]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop()):
            (pending if item.is_dir else found).append(item.path)
    return found


def test_a_training_run_logs_to_a_wandb_run_with_the_mlflow_runs_id(
    local_tracking: Path, tiny_manifest: Callable[..., dict[str, Any]]
) -> None:
    manifest = tiny_manifest({"training": {"epochs": 2}, "tracking": {"wandb": OFFLINE}})
    run = parse_resource(manifest)
    assert isinstance(run, TrainingRun)
    result = entrypoint.train(run, local_tracking)
    run_id = result.mlflow_run_id
    assert run_id is not None
    (recorded,) = wandb_files(local_tracking / "wandb" / run.metadata.name)
    assert recorded.run.run_id == run_id
    assert (recorded.run.project, recorded.run.run_group) == ("alpha", run.metadata.name)
    assert recorded.run.display_name == run.metadata.name
    assert recorded.config()["training"]["epochs"] == 2
    history = MlflowClient().get_metric_history(run_id, "val_loss")
    assert recorded.history["val_loss"] == pytest.approx({m.step: m.value for m in history})
    assert recorded.history["backtest_sharpe"]  # the test backtest, after the epochs
    assert {"equity_curve", "loss_curves", "attention_validation"} <= recorded.images()
    attention = {step for key, steps in recorded.history.items()
                 if key.startswith("attention_validation") for step in steps}  # fmt: skip
    assert attention == {1, 2}  # each epoch's, at its step
    files = logged_files(run_id)
    assert any(f.endswith(f"run-{run_id}.wandb") for f in files), files


def test_without_an_api_key_the_run_goes_on_with_mlflow_only(
    local_tracking: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    online = {"project": "alpha", "mode": "online"}
    run = parse_resource(tiny_manifest({"training": {"epochs": 1}, "tracking": {"wandb": online}}))
    assert isinstance(run, TrainingRun)
    result = entrypoint.train(run, local_tracking)
    assert result.mlflow_run_id is not None
    assert "W&B run not started (MLflow only)" in caplog.text
    assert MlflowClient().get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert logged_files(result.mlflow_run_id) == []


def test_each_rl_agent_and_the_ensemble_are_wandb_runs_of_one_group(local_tracking: Path) -> None:
    manifest = tiny_rlrun("boarded", "rl-wandb").model_dump(mode="json", by_alias=True)
    manifest["spec"]["tracking"]["wandb"] = OFFLINE | {"group": "desk-7"}
    run = parse_resource(manifest)
    train_and_combine(run, local_tracking)
    recorded = {f.run.display_name: f for f in wandb_files(local_tracking / "wandb")}
    agents = [f"boarded-{a.name}" for a in run.spec.agents]
    assert sorted(recorded) == sorted([*agents, "boarded-combine"])
    assert {f.run.run_group for f in recorded.values()} == {"desk-7"}
    assert recorded[agents[0]].history["eval_mean_reward"]
    assert any(k.startswith("ensemble_") for k in recorded["boarded-combine"].history)


WANDB_INIT = "import wandb; run = wandb.init(); run.log({'my_loss': 0.25}, step=7); run.finish()"


def test_own_codes_bare_wandb_init_joins_the_runs_wandb_run(
    own_code_run: Callable[..., dict[str, str]],
) -> None:
    env = own_code_run("own-wb", {"wandb": OFFLINE | {"entity": "quants"}}, WANDB_INIT)
    assert env["WANDB_RUN_ID"] == env["MLFLOW_RUN_ID"]
    assert (env["WANDB_PROJECT"], env["WANDB_ENTITY"], env["WANDB_RUN_GROUP"]) == (
        "alpha", "quants", "own-wb",
    )  # fmt: skip
    (recorded,) = wandb_files(Path(env["WANDB_DIR"]))
    assert recorded.run.run_id == env["MLFLOW_RUN_ID"]
    assert recorded.history["my_loss"] == {7: 0.25}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert logged_files(env["MLFLOW_RUN_ID"])
