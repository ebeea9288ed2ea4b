"""MinIO and MLflow of the local stack, through their real clients over HTTP."""

from __future__ import annotations

import io
import uuid

import pytest
from minio import Minio

from tradewind.devstack import DevStack
from tradewind.trainer.storage import s3_client_from_env

pytestmark = pytest.mark.integration


def _minio(stack: DevStack) -> Minio:
    return s3_client_from_env(stack.env())


def test_minio_put_get_list(stack: DevStack) -> None:
    client = _minio(stack)
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    payload = b"checkpoint bytes" * 1000
    client.put_object("tradewind", prefix + "step-1.pt", io.BytesIO(payload), len(payload))
    names = [o.object_name for o in client.list_objects("tradewind", prefix=prefix)]
    assert names == [prefix + "step-1.pt"]
    assert client.get_object("tradewind", prefix + "step-1.pt").read() == payload


def test_mlflow_run_metric_and_artifact_land_in_minio(
    stack: DevStack, tmp_path, monkeypatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    env = stack.env()
    # The server proxies artifacts: the client needs no S3 credentials.
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(key, raising=False)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(experiment)
    artifact = tmp_path / "equity.csv"
    artifact.write_text("t,equity\n0,1.0\n1,1.02\n")
    with mlflow.start_run() as run:
        mlflow.log_metric("val_loss", 0.42, step=3)
        mlflow.log_artifact(str(artifact))
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.42)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["equity.csv"]

    stored = [o.object_name for o in _minio(stack).list_objects("mlflow", recursive=True)]
    assert any(n.endswith(f"{run.info.run_id}/artifacts/equity.csv") for n in stored), stored
