"""Crafted checkpoints for the tests that nothing read from the store is unpickled: a pickle
whose loading creates a marker file, planted where each checkpointed object lives, in a
checkpoint otherwise complete (meta.json's sha256 matches: whoever can write the prefix can
write that too)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Protocol

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from tradewind.trainer.checkpoint import LATEST, META, STATE, rng_state, step_folder


class Poison:
    """Unpickling this creates `marker` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def poison_bytes(marker: Path) -> bytes:
    return pickle.dumps(Poison(marker), protocol=4)


def as_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor, the way the pickled format stored its objects."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def torch_bytes(state: Any, *, legacy: bool = False) -> bytes:
    """`state` through torch.save, whatever it holds (the checkpointer's own check skipped)."""
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


class Writable(Protocol):
    def put(self, key: str, data: bytes) -> None: ...


def plant(store: Writable, step: int, data: bytes) -> None:
    """`data` as the state.pt of checkpoint `step`, with a matching meta.json, committed as
    latest."""
    folder = step_folder(step)
    meta = {
        "format": 1,
        "step": step,
        "metric": None,
        "mode": "max",
        "time": "2026-01-01T00:00:00.000+00:00",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    store.put(f"{folder}/{STATE}", data)
    store.put(f"{folder}/{META}", json.dumps(meta).encode())
    store.put(LATEST, json.dumps({"step": step, "checkpoint": folder}).encode())


def poisoned_sb3_zip(model: BaseAlgorithm, marker: Path) -> bytes:
    """The agent's SB3 zip (what `BaseAlgorithm.load` reads) with its serialised
    `policy_class` replaced by the poison: SB3 cloudpickle-loads it."""
    original = io.BytesIO()
    model.save(original)
    out = io.BytesIO()
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name == "data":
                data = json.loads(content)
                data["policy_class"][":serialized:"] = base64.b64encode(
                    poison_bytes(marker)
                ).decode()
                content = json.dumps(data).encode()
            dst.writestr(name, content)
    return out.getvalue()


def pickled_format_state(
    model: BaseAlgorithm, train_env: VecEnv, marker: Path, poisoned: str
) -> dict[str, Any]:
    """An agent checkpoint in the pickled format (SB3 zip, pickled replay buffer, pickled
    VecNormalize, each as uint8 bytes), with the object `poisoned` (`model`,
    `replay_buffer` or `vecnormalize`) replaced by the poison."""
    assert isinstance(model, OffPolicyAlgorithm)
    model_zip = io.BytesIO()
    model.save(model_zip)
    buffer = io.BytesIO()
    model.save_replay_buffer(buffer)
    objects = {
        "model": poisoned_sb3_zip(model, marker) if poisoned == "model" else model_zip.getvalue(),
        "replay_buffer": buffer.getvalue(),
        "vecnormalize": pickle.dumps(train_env),
    }
    if poisoned != "model":
        objects[poisoned] = poison_bytes(marker)
    return {
        "timesteps": int(model.num_timesteps),
        "rng": rng_state(),
        **{key: as_tensor(value) for key, value in objects.items()},
    }
