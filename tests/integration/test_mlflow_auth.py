"""The operator's MLflow credentials against a real MLflow server with its basic-auth app:
with MLflow's own variable names in its environment the operator finds a run's MLflow run
and folds its metrics into the status; without them MLflow refuses it, and it says so."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tradewind.api.status import RunStatus
from tradewind.devstack.processes import ManagedProcess, free_port, http_ok, start, stop
from tradewind.operator.progress import ProgressReader, fold_progress
from tradewind.operator.settings import OperatorSettings

pytestmark = pytest.mark.integration

ADMIN, PASSWORD = "admin", "tradewind-admin-password-1"


@pytest.fixture(scope="module")
def mlflow_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("mlflow-auth")
    (d / "auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{d / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    pid = start(
        ManagedProcess(
            "mlflow-auth",
            [
                mlflow,
                "server",
                "--app-name=basic-auth",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--backend-store-uri=sqlite:///{d / 'mlflow.db'}",
                f"--default-artifact-root={d / 'artifacts'}",
                "--workers=1",
            ],
            d / "mlflow.log",
            lambda: http_ok(f"{url}/health"),
            env={
                "MLFLOW_AUTH_CONFIG_PATH": str(d / "auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            ports=[port],
            ready_timeout=120,
        )
    )
    try:
        yield url
    finally:
        stop(pid)


def test_the_operator_reads_progress_with_its_credentials_and_says_when_refused(
    mlflow_with_auth: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(mlflow_with_auth)
    experiment = client.create_experiment("auth-check")
    tags = {"tradewind.name": "r1", "tradewind.namespace": "team-a"}
    run_id = client.create_run(experiment, tags=tags).info.run_id
    client.log_metric(run_id, "val_loss", 0.25, step=3)
    client.log_metric(run_id, "epoch", 3, step=3)

    monkeypatch.setenv("TRADEWIND_MLFLOW_TRACKING_URI", mlflow_with_auth)
    reader = ProgressReader.from_settings(OperatorSettings())
    found = reader.find_run("auth-check", "r1", "team-a")
    assert found is not None and found["info"]["run_id"] == run_id
    status = fold_progress(RunStatus(), found, reader.uri or "", epochs=10)
    assert status.metrics["val_loss"] == 0.25 and status.progress.percent == 30
    assert status.headline_metric == "val_loss=0.25" and status.mlflow.run_id == run_id

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    anonymous = ProgressReader.from_settings(OperatorSettings())
    with caplog.at_level(logging.WARNING, logger="tradewind.operator.progress"):
        assert anonymous.find_run("auth-check", "r1", "team-a") is None
        assert anonymous.find_run("auth-check", "r1", "team-a") is None
    refusals = [r for r in caplog.records if "refused the operator (HTTP 401)" in r.getMessage()]
    assert len(refusals) == 1  # said once, not per reconcile
    assert "MLFLOW_TRACKING_USERNAME" in refusals[0].getMessage()
