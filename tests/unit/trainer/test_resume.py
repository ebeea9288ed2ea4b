"""Kill and resume: `python -m tradewind.trainer` SIGKILLed in the middle of an epoch and run
again ends with the same weights, bit for bit, as the same run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.storage import LocalStore

# Loaded as `sitecustomize` by the run that is killed only: a few optimizer steps after the
# first checkpoint is committed (so in the middle of epoch 2) it leaves a marker and blocks,
# and the test kills it there. The run's model, optimizer and RNGs have moved on from the
# checkpoint by then; the resumed run must throw that away.
PAUSE_HOOK = """
import os
import pathlib
import threading

from torch.optim.optimizer import register_optimizer_step_post_hook

_committed = pathlib.Path(os.environ["TW_TEST_COMMITTED"])
_paused = pathlib.Path(os.environ["TW_TEST_PAUSED"])
_steps_after_commit = 0


def _pause_mid_epoch(optimizer, args, kwargs):
    global _steps_after_commit
    if _committed.exists():
        _steps_after_commit += 1
        if _steps_after_commit == 3:
            _paused.touch()
            threading.Event().wait()


register_optimizer_step_post_hook(_pause_mid_epoch)
"""

EPOCHS = 3
TIMEOUT = 300


def _trainer_env(cache: Path) -> dict[str, str]:
    """This environment without any tracking server, object store or torchrun variables
    (MLflow falls back to a SQLite file in the state folder), with a private feature cache."""
    dropped = ("AWS_", "MLFLOW_", "TRADEWIND_")
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k not in dist_vars}
    return env | {"TRADEWIND_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _command(config: Path, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tradewind.trainer", "--config", str(config),
            "--state-dir", str(state_dir), "--result", str(state_dir / "result.json")]  # fmt: skip


def _wait_for(marker: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before pausing:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not pause within {TIMEOUT}s:\n{log.read_text()}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()


def _checkpointer(state_dir: Path) -> Checkpointer:
    return Checkpointer(LocalStore(state_dir / "checkpoints" / "tiny"))


def _val_loss_history(state_dir: Path) -> tuple[list[tuple[int, float]], list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tradewind")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    history = client.get_metric_history(runs[0].info.run_id, "val_loss")
    return sorted((m.step, m.value) for m in history), [r.info.status for r in runs]


def _assert_same_tensors(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_tensors(a[key], b[key], f"{what}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}.{key} differs"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Runs started by a test; any still alive at its end (a failed test) are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_mid_epoch_and_rerun_ends_bitwise_equal_to_an_uninterrupted_run(
    tmp_path: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # Augmentation draws from its own generator, dropout from torch's: both must resume.
    manifest = tiny_manifest(
        {"training": {"epochs": EPOCHS, "augmentation": {"noiseStd": 0.05, "probability": 0.5}}}
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(manifest))
    resumed, uninterrupted = tmp_path / "resumed", tmp_path / "uninterrupted"
    env = _trainer_env(tmp_path / "cache")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
    paused = tmp_path / "paused"
    latest = resumed / "checkpoints" / "tiny" / "latest.json"
    logs = {name: tmp_path / f"{name}.log" for name in ("killed", "resumed", "uninterrupted")}

    def start(state_dir: Path, log: str, extra: dict[str, str] | None = None) -> Any:
        with logs[log].open("wb") as out:
            proc = subprocess.Popen(
                _command(config, state_dir), env=env | (extra or {}), stdout=out, stderr=out
            )
        processes.append(proc)
        return proc

    baseline = start(uninterrupted, "uninterrupted")
    killed = start(
        resumed,
        "killed",
        {"PYTHONPATH": str(hook), "TW_TEST_COMMITTED": str(latest), "TW_TEST_PAUSED": str(paused)},
    )
    _wait_for(paused, killed, logs["killed"])
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert _checkpointer(resumed).latest_step == 1  # killed after epoch 1 was committed...
    assert not (resumed / "result.json").exists()  # ...and long before the end

    _finish(start(resumed, "resumed"), logs["resumed"])
    _finish(baseline, logs["uninterrupted"])

    assert "resumed at epoch 1" in logs["resumed"].read_text()
    final = {d: _checkpointer(d) for d in (resumed, uninterrupted)}
    assert [c.latest_step for c in final.values()] == [EPOCHS, EPOCHS]
    got, want = (c.load_latest() for c in final.values())
    assert got is not None and want is not None
    _assert_same_tensors(got["model"], want["model"], "model")
    _assert_same_tensors(got["optimizer"], want["optimizer"], "optimizer")
    assert got["train_state"]["step"] == want["train_state"]["step"]
    assert got["train_state"]["history"] == want["train_state"]["history"]

    # One MLflow run, each epoch logged once: epoch 1 by the killed process, 2 and 3 by the
    # resumed one (a run that started over would have opened a second MLflow run).
    history, statuses = _val_loss_history(resumed)
    assert [step for step, _ in history] == list(range(1, EPOCHS + 1))
    assert statuses == ["FINISHED"]
    assert history == _val_loss_history(uninterrupted)[0]
    result = json.loads((resumed / "result.json").read_text())
    assert result["mlflow_run_id"] == got["train_state"]["mlflow_run_id"]
