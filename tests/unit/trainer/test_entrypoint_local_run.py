"""`tradewind run -f` of the own-code example: the plain DDP script on two torchrun
processes here, its checkpoint in the local folder of the contract, its metrics in the run's
MLflow run (created by the launcher with Tradewind's identity tags); run again, it resumes
from that checkpoint into the same MLflow run."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "trainingrun-own-code.yaml"


def _tradewind_run(manifest: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", "tradewind.cli", "run", "-f", str(manifest),
            "--state-dir", str(state)]  # fmt: skip
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _with_epochs(tmp_path: Path, epochs: int) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["entrypoint"]["args"] = ["--epochs", str(epochs)]
    path = tmp_path / f"run-{epochs}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_ddp_example_runs_and_resumes_with_tradewind_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _tradewind_run(_with_epochs(tmp_path, 2), state)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout + first.stderr
    assert "rank 0 of 2" in out and "rank 1 of 2" in out  # nodes x procsPerNode processes
    checkpoint = state / "checkpoints" / "own-code-ddp" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2

    second = _tradewind_run(_with_epochs(tmp_path, 4), state)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from epoch 2" in second.stdout + second.stderr
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 4 and saved["starts"] == [0, 2]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["own-code"], output_format="list")
    (run,) = runs  # the second invocation resumed the first one's MLflow run
    assert run.data.tags["tradewind.name"] == "own-code-ddp"
    assert run.data.tags["tradewind.kind"] == "TrainingRun"
    assert run.data.metrics["epoch"] == 4 and run.data.metrics["start_epoch"] == 2
    assert run.info.status == "FINISHED"
