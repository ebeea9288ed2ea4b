"""An RLRun's MLflow record on the real tracking server (artifacts proxied to MinIO): each
agent's equity curve against buy-and-hold, and the combine step's table, metrics, equity
curves and the ensemble's uncertainty (metrics and plot)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.unit.trainer.test_rl_tracking import check_logged, tiny_rlrun, train_and_combine
from tradewind.devstack import DevStack

pytestmark = pytest.mark.integration


def test_rlrun_plots_and_ensemble_uncertainty_reach_the_mlflow_server(
    stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = stack.env()["MLFLOW_TRACKING_URI"]
    # The server proxies artifacts: the trainer needs no S3 credentials for MLflow.
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
        "TRADEWIND_CHECKPOINT_URI",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "cache"))
    suffix = uuid.uuid4().hex[:8]
    run = tiny_rlrun(f"rl-tracked-{suffix}", f"test-rl-{suffix}")
    rows = train_and_combine(run, tmp_path / "state")
    check_logged(MlflowClient(uri), run, rows)
    assert not (tmp_path / "state" / "mlflow.db").exists()  # everything went to the server
