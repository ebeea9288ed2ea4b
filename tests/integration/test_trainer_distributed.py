"""`tradewind run -f --nodes 2`: a two-process torchrun (gloo) TrainingRun against the local
stack, with checkpoints in its MinIO and metrics and the model in its MLflow server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from minio import Minio

from tests.tiny import BATCH_SIZE, tiny_run
from tradewind.api import TrainingRun
from tradewind.api.manifest import parse_resource
from tradewind.devstack import DevStack
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.data.dataset import build_dataset
from tradewind.trainer.storage import open_store, s3_client_from_env

pytestmark = pytest.mark.integration

BUCKET = "tradewind"
NAME = "ddp"
EPOCHS = 2
RANKS = 2


def _manifest(storage: str, experiment: str) -> dict[str, Any]:
    """The tiny TrainingRun (about 770 training windows), checkpointed to `storage`."""
    manifest = tiny_run(NAME, epochs=EPOCHS)
    manifest["spec"]["checkpoint"] = {"storage": storage}
    manifest["spec"]["tracking"]["experiment"] = experiment
    return manifest


@pytest.fixture
def env(stack: DevStack, tmp_path: Path) -> dict[str, str]:
    """This environment with the stack's MinIO and MLflow instead of any outer ones."""
    dropped = ("AWS_", "MLFLOW_", "TRADEWIND_")
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k not in dist_vars}
    return base | stack.env() | {"TRADEWIND_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def minio_client(env: dict[str, str]) -> Minio:
    return s3_client_from_env(env)


@pytest.fixture
def prefix(minio_client: Minio, env: dict[str, str]) -> Iterator[str]:
    """A fresh key prefix in the bucket, also the MLflow experiment's name; both removed."""
    from mlflow.tracking import MlflowClient

    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    for obj in minio_client.list_objects(BUCKET, prefix=f"{name}/", recursive=True):
        minio_client.remove_object(BUCKET, obj.object_name)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)


def test_two_rank_torchrun_checkpoints_to_minio_and_logs_one_mlflow_run(
    env: dict[str, str], minio_client: Minio, prefix: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    storage = f"s3://{BUCKET}/{prefix}/{NAME}"
    manifest = _manifest(storage, experiment=prefix)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(manifest))
    state_dir = tmp_path / "state"
    cli = Path(sys.executable).with_name("tradewind")  # the installed console script
    argv = [str(cli), "run", "-f", str(config), "--nodes", str(RANKS),
            "--state-dir", str(state_dir)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"torchrun: {RANKS} processes" in done.stdout

    # Checkpoints of every epoch, committed, in MinIO.
    listed = minio_client.list_objects(BUCKET, prefix=f"{prefix}/{NAME}/", recursive=True)
    keys = {o.object_name.removeprefix(f"{prefix}/{NAME}/") for o in listed}
    steps = range(1, EPOCHS + 1)
    assert {"latest.json", "best.json"} | {f"step-{s:010d}/state.pt" for s in steps} <= keys
    state = Checkpointer(open_store(storage, env)).load_latest()
    assert state is not None and state["train_state"]["epoch"] == EPOCHS

    # DDP over two ranks: each rank stepped through its half of every epoch's samples
    # (one process alone would take about twice the optimizer steps).
    run = parse_resource(manifest)
    assert isinstance(run, TrainingRun)
    samples = len(
        build_dataset(run.spec.data, run.spec.seed, cache_dir=tmp_path / "cache" / "features").train
    )
    per_rank, alone = math.ceil(samples // RANKS / BATCH_SIZE), math.ceil(samples / BATCH_SIZE)
    assert per_rank < alone
    assert state["train_state"]["step"] == EPOCHS * per_rank

    # One MLflow run (rank 0's), an entry per epoch, finished, with the model logged.
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(prefix)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert runs[0].info.status == "FINISHED"
    assert state["train_state"]["mlflow_run_id"] == run_id
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history) == list(steps)
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", run_id)]
    artifacts = [a.path for a in client.list_logged_model_artifacts(models[0].model_id)]
    assert "MLmodel" in artifacts

    result = json.loads((state_dir / f"{NAME}.result.json").read_text())
    assert result["mlflow_run_id"] == run_id
    assert result["latest_checkpoint"] == f"{storage}/step-{EPOCHS:010d}"
