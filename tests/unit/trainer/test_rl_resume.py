"""Kill-and-resume of an off-policy agent: SIGKILL `python -m tradewind.trainer.rl` after
its first checkpoint, run it again, and the replay buffer it resumes with is the one it had."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.unit.trainer.test_resume import _trainer_env
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.rl.agents import ALGORITHMS
from tradewind.trainer.storage import LocalStore

HYPERPARAMETERS = {"buffer_size": 10000, "learning_starts": 50, "batch_size": 32, "net_arch": [16]}
ENVIRONMENT = {
    "data": {"source": "stocks", "symbols": ["AAPL"]},
    "actionSpace": "continuous",
    "episodeLength": 60,
}
RUN = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "RLRun",
    "metadata": {"name": "sac-resume"},
    "spec": {
        "environment": ENVIRONMENT,
        "agents": [{"name": "sac", "algorithm": "sac", "hyperparameters": HYPERPARAMETERS}],
        "totalTimesteps": 600,
        "nEnvs": 2,
        "eval": {"freq": 200, "episodes": 1},
        "tracking": {"systemMetrics": False},
    },
}


def _buffer_size(state: dict) -> int:  # type: ignore[type-arg]
    """Rows of the replay buffer (one per vector step): the checkpoint keeps the filled ones."""
    return int(state["replay_buffer"]["arrays"]["rewards"].shape[0])


def test_sac_killed_mid_training_resumes_with_its_replay_buffer(tmp_path: Path) -> None:
    assert "sac" in ALGORITHMS
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    state_dir = tmp_path / "state"
    command = [sys.executable, "-m", "tradewind.trainer.rl", "--config", str(config),
               "--agent-index", "0", "--state-dir", str(state_dir)]  # fmt: skip
    env = _trainer_env(tmp_path / "cache")
    checkpoints = state_dir / "checkpoints" / "sac-resume" / "agents" / "sac"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (checkpoints / "latest.json").exists():
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()

    killed_at = Checkpointer(LocalStore(checkpoints)).load_latest()
    assert killed_at is not None
    steps_at_kill = killed_at["timesteps"]
    assert 0 < steps_at_kill < 600
    assert _buffer_size(killed_at) == steps_at_kill // 2  # one slot per vector step of 2 envs

    second = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"agent sac resumed at {steps_at_kill} timesteps" in second.stderr
    final = Checkpointer(LocalStore(checkpoints)).load_latest()
    assert final is not None and final["timesteps"] >= 600
    # Restored, then extended: every transition since step 0 is in the buffer.
    assert _buffer_size(final) == final["timesteps"] // 2
