"""A local Sweep whose template runs its own code: each trial's code reads its searched value
from the trial's manifest ($TRADEWIND_RUN_CONFIG) and logs the objective into the MLflow run
the launcher made; the Sweep finds it by the trial's identity tags."""

import io
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tradewind.api import Sweep, load_resources
from tradewind.sweeps.local import run_sweep

SCRIPT = """
import os, yaml, mlflow
spec = yaml.safe_load(open(os.environ["TRADEWIND_RUN_CONFIG"]))["spec"]
lr = spec["training"]["optimizer"]["learningRate"]
assert os.environ["RANK"] == "0" and os.environ["TRADEWIND_CHECKPOINT_DIR"]
with mlflow.start_run():  # the trial's own run: MLFLOW_RUN_ID
    mlflow.log_metric("score", 1000 * lr, step=1)
"""


def test_a_local_sweep_over_own_code_reads_the_objective_it_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "own-sweep"},
        "spec": {
            "template": {
                "kind": "TrainingRun",
                "spec": {
                    "entrypoint": {"command": [sys.executable, str(script)]},
                    "tracking": {"experiment": "own-sweep", "systemMetrics": False},
                },
            },
            "objective": {"metric": "score", "direction": "maximize"},
            "searchSpace": {
                "training.optimizer.learningRate": {"type": "grid", "values": [0.001, 0.004]}
            },
            "sampler": "grid",
            "maxTrials": 2,
            "parallelism": 1,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    (sweep,) = load_resources(path)
    assert isinstance(sweep, Sweep)
    out = io.StringIO()
    outcome = run_sweep(sweep, tmp_path / "state", Console(file=out, width=200))
    assert outcome.succeeded, out.getvalue()
    assert outcome.best_value == pytest.approx(4.0)
    assert outcome.best_params == {"training.optimizer.learningRate": 0.004}
