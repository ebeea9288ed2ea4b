"""Checkpoints in the local stack's real MinIO, through S3Store, checked with the minio SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch
from minio import Minio
from torch import nn

from tradewind.devstack import DevStack
from tradewind.trainer.checkpoint import Checkpointer, load_from_uri, rng_state
from tradewind.trainer.storage import S3Store, StorageError, open_store, s3_client_from_env

pytestmark = pytest.mark.integration

BUCKET = "tradewind"


@pytest.fixture
def env(stack: DevStack) -> dict[str, str]:
    return stack.env()


@pytest.fixture
def minio_client(env: dict[str, str]) -> Minio:
    return s3_client_from_env(env)


@pytest.fixture
def prefix(minio_client: Minio) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    for obj in minio_client.list_objects(BUCKET, prefix=f"{name}/", recursive=True):
        minio_client.remove_object(BUCKET, obj.object_name)


def _state(step: int) -> dict[str, object]:
    torch.manual_seed(step)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
    }


def test_checkpoints_prune_and_load_from_minio(
    env: dict[str, str], minio_client: Minio, prefix: str
) -> None:
    store = open_store(f"s3://{BUCKET}/{prefix}/", env)
    assert isinstance(store, S3Store)
    checkpointer = Checkpointer(store, keep_last=1)
    assert checkpointer.load_latest() is None
    states = {step: _state(step) for step in (1, 2, 3)}
    for step, metric in [(1, 0.10), (2, 0.50), (3, 0.30)]:
        uri = checkpointer.save(step, states[step], metric=metric)
        assert uri == f"s3://{BUCKET}/{prefix}/step-{step:010d}"

    names = [o.object_name for o in minio_client.list_objects(BUCKET, f"{prefix}/", True)]
    assert sorted(names) == [
        f"{prefix}/best.json",
        f"{prefix}/latest.json",
        f"{prefix}/step-0000000001/meta.json",  # the best, kept beyond keep_last
        f"{prefix}/step-0000000001/state.pt",
        f"{prefix}/step-0000000003/meta.json",
        f"{prefix}/step-0000000003/state.pt",
    ]

    reader = Checkpointer(open_store(f"s3://{BUCKET}/{prefix}", env))
    latest = reader.load_latest()
    assert latest is not None and latest["step"] == 3
    expected_model = states[3]["model"]
    assert isinstance(expected_model, dict)
    for name, tensor in latest["model"].items():
        assert torch.equal(tensor, expected_model[name])
    assert reader.best_uri == f"s3://{BUCKET}/{prefix}/step-0000000001"
    assert reader.load(1)["step"] == 1
    assert load_from_uri(f"{reader.best_uri}/state.pt", environ=env)["step"] == 1


def test_missing_bucket_is_named_in_the_error(env: dict[str, str]) -> None:
    uri = f"s3://missing-{uuid.uuid4().hex[:8]}/run"
    checkpointer = Checkpointer(open_store(uri, env))
    with pytest.raises(StorageError, match="does not exist") as caught:
        checkpointer.save(1, {"step": 1})
    assert f"{uri}/step-0000000001/state.pt" in str(caught.value)
    assert env["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)
    with pytest.raises(StorageError, match=f"{uri}/latest.json: bucket .* does not exist"):
        checkpointer.load_latest()


def test_rejected_credentials_are_named_without_the_secret(
    env: dict[str, str], prefix: str
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    store = open_store(f"s3://{BUCKET}/{prefix}", env | {"AWS_SECRET_ACCESS_KEY": wrong})
    with pytest.raises(StorageError, match="credentials rejected") as caught:
        store.put("latest.json", b"{}")
    message = str(caught.value)
    assert f"s3://{BUCKET}/{prefix}/latest.json" in message
    assert wrong not in message and env["AWS_SECRET_ACCESS_KEY"] not in message
