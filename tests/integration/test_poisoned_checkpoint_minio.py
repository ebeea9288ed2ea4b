"""A poisoned object uploaded into a run's checkpoint prefix on the stack's real MinIO runs
nothing when the trainer resumes (`python -m tradewind.trainer.rl` and `python -m
tradewind.trainer`, as in a pod): the trainer refuses the checkpoint, exits 64 naming it,
and the marker the poison would create never appears."""

from __future__ import annotations

import io
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

from tests.tiny import tiny_run
from tests.unit.trainer.poison import (
    Poison,
    as_tensor,
    plant,
    poison_bytes,
    poisoned_sb3_zip,
    torch_bytes,
)
from tradewind.api import RLRun
from tradewind.devstack import DevStack
from tradewind.trainer.checkpoint import rng_state
from tradewind.trainer.storage import s3_client_from_env

pytestmark = pytest.mark.integration

BUCKET = "tradewind"


class MinioWriter:
    """Puts objects with the minio SDK directly, as anyone holding keys to the prefix could
    (not through the trainer's own store)."""

    def __init__(self, client: Minio, prefix: str) -> None:
        self.client, self.prefix = client, prefix.strip("/")

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(BUCKET, f"{self.prefix}/{key}", io.BytesIO(data), len(data))


@pytest.fixture
def env(stack: DevStack, tmp_path: Path) -> dict[str, str]:
    """A pod's environment: the stack's MinIO as the checkpoint store (this test's own
    prefix), a run uid, no MLflow server (a SQLite file in the state folder)."""
    drop = ("AWS_", "MLFLOW_", "TRADEWIND_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    store = {k: v for k, v in stack.env().items() if k.startswith("AWS_")}
    return base | store | {
        "TRADEWIND_CHECKPOINT_URI": f"s3://{BUCKET}/test-{uuid.uuid4().hex[:8]}",
        "TRADEWIND_RUN_UID": str(uuid.uuid4()),
        "TRADEWIND_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip


@pytest.fixture
def minio_client(env: dict[str, str]) -> Iterator[Minio]:
    client = s3_client_from_env(env)
    yield client
    prefix = env["TRADEWIND_CHECKPOINT_URI"].removeprefix(f"s3://{BUCKET}/")
    for obj in client.list_objects(BUCKET, prefix=f"{prefix}/", recursive=True):
        client.remove_object(BUCKET, obj.object_name)


def _prefix(env: dict[str, str], run: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The run's checkpoint prefix (key under the bucket) as the trainer computes it."""
    from tradewind.trainer.entrypoint import checkpoint_uri

    for key, value in env.items():
        if key.startswith("TRADEWIND_"):
            monkeypatch.setenv(key, value)
    uri = checkpoint_uri(run, state_dir)
    assert uri.startswith(f"s3://{BUCKET}/"), uri
    return uri.removeprefix(f"s3://{BUCKET}/")


def _sac_run() -> RLRun:
    return RLRun.model_validate(
        {
            "apiVersion": "tradewind.dev/v1alpha1",
            "kind": "RLRun",
            "metadata": {"name": "poisoned-sac", "namespace": "team-b"},
            "spec": {
                "environment": {
                    "data": {"source": "stocks", "symbols": ["AAPL"]},
                    "actionSpace": "continuous",
                    "episodeLength": 40,
                },
                "agents": [
                    {
                        "name": "sac",
                        "algorithm": "sac",
                        "hyperparameters": {
                            "buffer_size": 500,
                            "learning_starts": 10,
                            "batch_size": 8,
                            "net_arch": [8],
                        },
                    }
                ],
                "totalTimesteps": 64,
                "nEnvs": 2,
                "normalize": True,
                "eval": {"freq": 32, "episodes": 1},
                "tracking": {"systemMetrics": False},
            },
        }
    )


def _pickled_format_agent(run: RLRun, markers: dict[str, Path]) -> dict[str, Any]:
    """The agent's checkpoint as earlier versions wrote it (SB3 zip, pickled replay buffer
    and VecNormalize as bytes), every one of the three poisoned."""
    from tradewind.trainer.rl.agents import build_agent
    from tradewind.trainer.rl.run import run_markets
    from tradewind.trainer.rl.training import make_envs

    markets = run_markets(run.spec)
    envs = make_envs(run.spec, markets.train, markets.validation, seed=run.spec.seed)
    model = build_agent(run.spec.agents[0], envs.train, seed=run.spec.seed, device="cpu")
    return {
        "timesteps": 32,
        "rng": rng_state(),
        "model": as_tensor(poisoned_sb3_zip(model, markers["model"])),
        "replay_buffer": as_tensor(poison_bytes(markers["replay_buffer"])),
        "vecnormalize": as_tensor(poison_bytes(markers["vecnormalize"])),
    }


def _trainer(module: str, config: Path, state_dir: Path, env: dict[str, str], *extra: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config), "--state-dir", str(state_dir),
         *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_poisoned_rl_checkpoint_in_minio_runs_nothing_on_resume(
    env: dict[str, str],
    minio_client: Minio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _sac_run()
    state_dir = tmp_path / "state"
    prefix = f"{_prefix(env, run, state_dir, monkeypatch)}/agents/sac"
    markers = {
        name: tmp_path / f"pwned-{name}"
        for name in ("model", "replay_buffer", "vecnormalize", "state")
    }
    store = MinioWriter(minio_client, prefix)
    # step 1: the pickled format, its three objects poisoned; step 2 (latest): a state.pt
    # whose policy is a pickled object.
    plant(store, 1, torch_bytes(_pickled_format_agent(run, markers)))
    poisoned_state = {
        "format": "tradewind.rl.agent/2",
        "params": {"policy": Poison(markers["state"])},
    }
    plant(store, 2, torch_bytes(poisoned_state))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run.model_dump(mode="json", by_alias=True, exclude_none=True)))

    result = _trainer("tradewind.trainer.rl", config, state_dir, env, "--agent-index", "0")

    assert result.returncode == 64, result.stderr[-3000:]
    assert [name for name, marker in markers.items() if marker.exists()] == []
    assert f"s3://{BUCKET}/{prefix}/step-0000000002/state.pt cannot be loaded" in result.stderr
    assert f"error: checkpoint: agent sac: s3://{BUCKET}/{prefix}/step-0000000001" in result.stderr
    assert "old pickled format (model, vecnormalize, replay_buffer as pickled" in result.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in result.stderr


def test_a_poisoned_training_checkpoint_in_minio_runs_nothing_on_resume(
    env: dict[str, str],
    minio_client: Minio,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = tiny_run("poisoned-tiny")
    manifest["metadata"]["namespace"] = "team-b"
    from tradewind.api.manifest import parse_resource

    run = parse_resource(manifest)
    state_dir = tmp_path / "state"
    prefix = _prefix(env, run, state_dir, monkeypatch)
    marker = tmp_path / "pwned"
    plant(
        MinioWriter(minio_client, prefix),
        3,
        torch_bytes({"model": {}, "optimizer": Poison(marker)}),
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(manifest))

    result = _trainer("tradewind.trainer", config, state_dir, env)

    assert result.returncode == 64, result.stderr[-3000:]
    assert not marker.exists()
    assert f"s3://{BUCKET}/{prefix}/step-0000000003/state.pt cannot be loaded" in result.stderr
