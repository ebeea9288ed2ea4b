"""`tradewind operator` as a separate process against a test stack, as the tests run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tradewind.devstack import DevStack
from tradewind.devstack.processes import free_port


class OperatorProcess:
    """The operator with MLflow, MinIO and an Optuna storage in `folder`; JSON logs to
    `folder/operator.log`, metrics and liveness on free ports. `args` go on its command line,
    `env` over the TRADEWIND_* settings (`self.env` may be changed before `start`). Its name
    in the leader-election Lease is `folder`'s, the same across `kill` and `start` (as a pod's
    across container restarts): a restarted operator leads again at once."""

    def __init__(self, stack: DevStack, folder: Path, *args: str, **env: str) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = folder / "operator.log"
        self.storage = f"sqlite:///{folder / 'optuna.db'}"
        base = {**os.environ, **stack.env()}
        self.env = (
            base
            | {
                "TRADEWIND_MLFLOW_TRACKING_URI": base["MLFLOW_TRACKING_URI"],
                "TRADEWIND_S3_ENDPOINT": base["AWS_ENDPOINT_URL"],
                "TRADEWIND_S3_CREDENTIALS_SECRET": "minio-credentials",
                "TRADEWIND_TRAINER_IMAGE": "tradewind-trainer:test",
                "TRADEWIND_STATUS_POLL_SECONDS": "1",
                "TRADEWIND_OPTUNA_STORAGE": self.storage,
                "TRADEWIND_LEASE_IDENTITY": f"test-{folder.name}",
            }
            | env
        )
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tradewind.cli", "operator", "--json-logs",
                f"--metrics-port={self.metrics_port}",
                f"--liveness=http://127.0.0.1:{self.health_port}/healthz", *self.args]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
