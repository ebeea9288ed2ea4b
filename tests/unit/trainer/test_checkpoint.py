"""Checkpointer on a real local folder: round trips, pruning, atomic commit, corruption, RNG."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tradewind.trainer.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_from_uri,
    rng_state,
    set_rng_state,
    step_folder,
)
from tradewind.trainer.storage import LocalStore

LOGGER = "tradewind.trainer.checkpoint"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "run")


class Trainer:
    """A small model, AdamW and a one-cycle schedule, trained on random batches."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=0.05, total_steps=50
        )

    def step(self) -> None:
        x, y = torch.randn(32, 8), torch.randn(32, 1)  # draws from the global torch RNG
        loss = nn.functional.mse_loss(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_round_trip_resumes_training_bit_for_bit(store: LocalStore) -> None:
    original = Trainer(seed=0)
    for _ in range(5):
        original.step()
    uri = Checkpointer(store).save(5, {"step": 5, **original.state_dict()})
    assert uri == store.uri(step_folder(5))

    restored = Trainer(seed=123)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(_params(original.model), _params(restored.model), strict=True)
    )
    state = Checkpointer(store).load_latest()
    assert state is not None and state["step"] == 5
    restored.load_state_dict(state)
    assert restored.scheduler.get_last_lr() == original.scheduler.get_last_lr()
    assert torch.equal(
        restored.optimizer.state_dict()["state"][0]["exp_avg_sq"],
        original.optimizer.state_dict()["state"][0]["exp_avg_sq"],
    )

    # Continuing both (random batches, dropout) gives identical weights: RNG came back too.
    set_rng_state(state["rng"])
    for _ in range(3):
        original.step()
    set_rng_state(state["rng"])
    for _ in range(3):
        restored.step()
    for a, b in zip(_params(original.model), _params(restored.model), strict=True):
        assert torch.equal(a, b)


def _draws() -> list[Any]:
    return [
        random.random(),
        random.gauss(0, 1),  # leaves gauss_next cached
        np.random.rand(3).tolist(),
        np.random.normal(size=1).tolist(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    ]


def test_rng_state_restores_the_next_draws_through_a_checkpoint(store: LocalStore) -> None:
    random.gauss(0, 1)
    np.random.standard_normal()  # both generators now hold a cached gaussian
    checkpointer = Checkpointer(store)
    checkpointer.save(1, {"rng": rng_state()})
    expected = _draws()
    assert _draws() != expected  # the generators moved on
    state = checkpointer.load_latest()  # torch.load(weights_only=True) underneath
    assert state is not None
    set_rng_state(state["rng"])
    assert _draws() == expected


def test_rng_state_holds_only_weights_only_types() -> None:
    def leaves(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [leaf for v in value.values() for leaf in leaves(v)]
        if isinstance(value, list | tuple):
            return [leaf for v in value for leaf in leaves(v)]
        return [value]

    for leaf in leaves(rng_state()):
        assert isinstance(leaf, torch.Tensor | int | float | str | type(None)), type(leaf)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_is_restored() -> None:
    saved = rng_state()
    assert len(saved["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda").tolist()
    set_rng_state(saved)
    assert torch.rand(4, device="cuda").tolist() == expected


def test_layout_and_metadata(store: LocalStore) -> None:
    checkpointer = Checkpointer(store)
    assert (checkpointer.load_latest(), checkpointer.latest_uri, checkpointer.best_uri) == (
        None,
        None,
        None,
    )
    checkpointer.save(7, {"w": torch.ones(3)}, metric=0.25)
    assert store.list("") == [
        "best.json",
        "latest.json",
        "step-0000000007/meta.json",
        "step-0000000007/state.pt",
    ]
    meta = json.loads(store.get("step-0000000007/meta.json"))
    assert meta["step"] == 7 and meta["metric"] == 0.25 and meta["mode"] == "min"
    assert meta["bytes"] == len(store.get("step-0000000007/state.pt"))
    assert json.loads(store.get("latest.json"))["step"] == 7
    assert checkpointer.latest_step == 7
    assert checkpointer.latest_uri == checkpointer.best_uri == store.uri("step-0000000007")


def test_state_torch_cannot_load_safely_is_refused_before_writing(store: LocalStore) -> None:
    with pytest.raises(TypeError, match=r"weights_only=True\) refuses: .*numpy"):
        Checkpointer(store).save(1, {"bad": np.zeros(3)})
    assert store.list("") == []


@pytest.mark.parametrize(
    ("mode", "metrics", "best", "kept"),
    [
        ("min", [0.5, 0.1, 0.4, 0.3, 0.2], 2, [2, 4, 5]),
        ("max", [9.0, 1.0, 2.0, 3.0, 4.0], 1, [1, 4, 5]),
        ("min", [0.5, 0.4, 0.3, 0.2, 0.1], 5, [4, 5]),  # the best is among the last
        ("min", [None, 0.3, None, None, None], 2, [2, 4, 5]),
        ("min", [None] * 5, None, [4, 5]),
    ],
)
def test_pruning_keeps_the_last_and_the_best(
    store: LocalStore, mode: Any, metrics: list[float | None], best: int | None, kept: list[int]
) -> None:
    checkpointer = Checkpointer(store, keep_last=2)
    for step, metric in enumerate(metrics, start=1):
        checkpointer.save(step, {"step": step}, metric=metric, mode=mode)
    assert checkpointer.steps() == kept
    assert sorted({k.split("/")[0] for k in store.list("step-")}) == [step_folder(s) for s in kept]
    assert checkpointer.best_step == best
    if best is not None:
        assert checkpointer.load(best) == {"step": best}
    assert checkpointer.latest_step == 5


def test_an_old_best_is_pruned_once_beaten(store: LocalStore) -> None:
    checkpointer = Checkpointer(store, keep_last=1)
    for step, metric in enumerate([0.1, 0.5, 0.05, 0.6], start=1):
        checkpointer.save(step, {"step": step}, metric=metric)
    assert checkpointer.steps() == [3, 4]
    assert checkpointer.best_uri == store.uri("step-0000000003")


def test_non_finite_metrics_are_not_ranked(store: LocalStore) -> None:
    checkpointer = Checkpointer(store, keep_last=1)
    checkpointer.save(1, {}, metric=0.5)
    checkpointer.save(2, {}, metric=float("nan"))
    assert checkpointer.best_step == 1


class RecordingStore(LocalStore):
    """Records every put; crashes on the n-th put of `fail_key`, after writing half of the
    object when `torn` (worse than S3 or LocalStore ever do: their puts are atomic)."""

    def __init__(
        self, root: Path, fail_key: str = "", occurrence: int = 1, torn: bool = False
    ) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.fail_key, self.occurrence, self.torn = fail_key, occurrence, torn

    def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        if key == self.fail_key and Counter(self.puts)[key] == self.occurrence:
            if self.torn:
                super().put(key, data[: len(data) // 2])
            raise OSError(f"simulated crash while uploading {key}")
        super().put(key, data)


def test_latest_moves_only_after_the_checkpoint_files_exist(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    checkpointer = Checkpointer(store)
    for step in (1, 2):
        checkpointer.save(step, {"step": step}, metric=1.0 / step)
    commits = [i for i, key in enumerate(store.puts) if key == "latest.json"]
    for step, latest in zip((1, 2), commits, strict=True):
        folder = step_folder(step)
        assert store.puts.index(f"{folder}/state.pt") < latest
        assert store.puts.index(f"{folder}/meta.json") < latest


@pytest.mark.parametrize(
    ("fail_key", "occurrence", "torn"),
    [
        ("step-0000000003/state.pt", 1, False),
        ("step-0000000003/state.pt", 1, True),
        ("step-0000000003/meta.json", 1, True),
        ("latest.json", 3, False),
    ],
)
def test_crash_mid_save_leaves_latest_at_the_previous_checkpoint(
    tmp_path: Path, fail_key: str, occurrence: int, torn: bool
) -> None:
    store = RecordingStore(tmp_path, fail_key, occurrence, torn)
    checkpointer = Checkpointer(store, keep_last=1)
    checkpointer.save(1, {"step": 1})
    checkpointer.save(2, {"step": 2})
    with pytest.raises(OSError, match="simulated crash"):
        checkpointer.save(3, {"step": 3})

    after_restart = Checkpointer(LocalStore(tmp_path), keep_last=1)
    assert after_restart.latest_step == 2
    assert after_restart.load_latest() == {"step": 2}
    after_restart.save(3, {"step": 3, "again": True})  # the retried save replaces the leftovers
    assert after_restart.load_latest() == {"step": 3, "again": True}
    assert after_restart.steps() == [3]


def _tamper(store: LocalStore, key: str) -> None:
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))


def test_corrupt_latest_falls_back_to_the_previous_one_with_a_warning(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = Checkpointer(store)
    for step in (1, 2, 3):
        checkpointer.save(step, {"step": step, "w": torch.full((64,), float(step))})
    _tamper(store, "step-0000000003/state.pt")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        state = checkpointer.load_latest()
    assert state is not None and state["step"] == 2
    assert "step-0000000003/state.pt is corrupt: sha256" in caplog.text
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpointer.load(3)  # an explicit step does not fall back

    store.delete("step-0000000002/state.pt")  # missing, not just corrupt
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        state = checkpointer.load_latest()
    assert state is not None and state["step"] == 1
    assert "step-0000000002/state.pt is missing" in caplog.text


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(store: LocalStore) -> None:
    checkpointer = Checkpointer(store)
    for step in (1, 2):
        checkpointer.save(step, {"step": step})
        _tamper(store, f"{step_folder(step)}/state.pt")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        checkpointer.load_latest()


def test_unreadable_latest_json_falls_back_to_the_newest_complete(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = Checkpointer(store)
    for step in (1, 2):
        checkpointer.save(step, {"step": step})
    store.put("latest.json", b"{not json")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert checkpointer.load_latest() == {"step": 2}
    assert "latest.json is unreadable" in caplog.text


def test_resume_from_another_runs_checkpoint(tmp_path: Path) -> None:
    source = Checkpointer(LocalStore(tmp_path / "pretrain"))
    for step in (1, 2):
        source.save(step, {"step": step, "run": "pretrain"})
    assert source.latest_uri is not None
    target = Checkpointer(LocalStore(tmp_path / "finetune"))

    assert target.resume(source.latest_uri) == {"step": 2, "run": "pretrain"}
    assert load_from_uri(source.store.uri("")) == {"step": 2, "run": "pretrain"}
    assert target.load_from_uri(source.store.uri("step-0000000002")) == {
        "step": 2,
        "run": "pretrain",
    }
    assert target.load(source.store.uri("step-0000000001/state.pt")) == {
        "step": 1,
        "run": "pretrain",
    }
    assert target.resume("latest") is None and target.resume("none") is None

    target.save(10, {"step": 10, "run": "finetune"})  # a restarted attempt continues its own
    assert target.resume(source.latest_uri) == {"step": 10, "run": "finetune"}
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_from_uri((tmp_path / "empty").as_uri())


def test_keep_last_must_be_positive(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(store, keep_last=0)
