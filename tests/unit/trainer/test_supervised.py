"""SupervisedTrainer on tiny data, in this process: sharding, batches, early stopping,
curriculum, every training technique, and the exit codes of the entry point."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tradewind.api import TrainingRun
from tradewind.api.manifest import parse_resource
from tradewind.trainer import supervised
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.entrypoint import EXIT_BAD_CONFIG, EXIT_DATA_NOT_FOUND, main
from tradewind.trainer.storage import LocalStore, StorageError
from tradewind.trainer.supervised import SupervisedTrainer, shard_indices
from tradewind.trainer.tracking import Tracker

pytestmark = pytest.mark.usefixtures("torch_sandbox")

CPU = torch.device("cpu")
Build = Callable[..., SupervisedTrainer]


def _env(rank: int = 0, world_size: int = 1) -> DistEnv:
    return DistEnv(rank=rank, local_rank=rank, world_size=world_size, device=CPU)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_trainer(
    tmp_path: Path,
    feature_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_manifest: Callable[..., dict[str, Any]],
) -> Build:
    """`make_trainer(*spec_overrides, checkpoints=None)`: a trainer of the tiny run, alone
    on the CPU, with tracking off and checkpoints in `checkpoints` (default: a fresh folder)."""
    monkeypatch.setenv("TRADEWIND_CACHE", str(feature_cache))
    count = 0

    def build(*specs: dict[str, Any], checkpoints: Path | None = None) -> SupervisedTrainer:
        nonlocal count
        count += 1
        run = parse_resource(tiny_manifest(*specs))
        assert isinstance(run, TrainingRun)
        store = LocalStore(checkpoints or tmp_path / f"checkpoints-{count}")
        return SupervisedTrainer(run, _env(), Checkpointer(store), Tracker(enabled=False))

    return build


# --- shard_indices ---------------------------------------------------------------------------


def test_shards_are_equal_disjoint_and_cut_from_one_seeded_permutation() -> None:
    n, world = 103, 4
    shards = [shard_indices(n, 5, seed=1, env=_env(r, world)) for r in range(world)]
    assert [len(s) for s in shards] == [n // world] * world
    joined = np.concatenate(shards)
    assert len(set(joined.tolist())) == len(joined)  # disjoint
    assert set(joined.tolist()) <= set(range(n))
    # every rank cuts its share from the same permutation: the one a single process sees
    alone = shard_indices(n, 5, seed=1, env=_env())
    assert sorted(alone.tolist()) == list(range(n))
    np.testing.assert_array_equal(joined, alone[: len(joined)])


def test_shard_order_depends_only_on_seed_and_epoch() -> None:
    env = _env(1, 2)
    first = shard_indices(500, 3, seed=11, env=env)
    np.random.seed(0)  # the global generators play no part
    torch.manual_seed(0)
    np.testing.assert_array_equal(shard_indices(500, 3, seed=11, env=env), first)
    assert not np.array_equal(shard_indices(500, 4, seed=11, env=env), first)
    assert not np.array_equal(shard_indices(500, 3, seed=12, env=env), first)


def test_shards_of_a_pool_hold_only_its_members() -> None:
    pool = np.arange(0, 200, 3)
    shards = [shard_indices(200, 0, seed=1, env=_env(r, 2), pool=pool) for r in range(2)]
    assert all(len(s) == len(pool) // 2 for s in shards)
    assert set(np.concatenate(shards).tolist()) <= set(pool.tolist())


# --- BatchMaker ------------------------------------------------------------------------------


def test_batches_scale_returns_and_hold_the_next_bars_returns_as_sequence(
    make_trainer: Build,
) -> None:
    horizon = 4
    trainer = make_trainer(
        {
            "data": {"predictionHorizon": horizon},
            "model": {"type": "lstm"},
            "training": {"seq2seq": {"outputLength": horizon}},
        }
    )
    data, batches = trainer.data, trainer.batches
    train = data.train
    assert batches.seq_len == horizon
    assert batches.ret_scale == pytest.approx(float(train.forward_returns.std()))

    parts = list(batches(train, np.arange(len(train)), 100))
    y_ret = torch.cat([b["y_ret"] for b in parts]).numpy()
    y_seq = torch.cat([b["y_seq"] for b in parts]).numpy()
    np.testing.assert_allclose(y_ret * batches.ret_scale, train.forward_returns, rtol=1e-5)
    assert y_ret.std() == pytest.approx(1.0, rel=1e-4)

    # The window ending `horizon` bars after a sample ends with that sample's next bars.
    col = data.feature_names.index("returns")
    ahead = train.windows[train.window_index + horizon]
    np.testing.assert_array_equal(y_seq, ahead[:, -horizon:, col])
    # Un-normalised, those bars' returns compound to the sample's forward return.
    center, scale = data.normalizer.center, data.normalizer.scale
    assert center is not None and scale is not None
    raw = y_seq.astype(np.float64) * scale[col] + center[col]
    np.testing.assert_allclose(np.prod(1 + raw, axis=1) - 1, train.forward_returns, atol=1e-5)


# --- early stopping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitor", "mode", "patience"),
    [("val_loss", "min", 1), ("val_accuracy", "max", 2)],
)
def test_early_stopping_stops_once_the_metric_stops_improving(
    make_trainer: Build, monitor: str, mode: str, patience: int
) -> None:
    # No change can beat a min_delta of 10: only the first epoch counts as an improvement.
    stopping = {"monitor": monitor, "mode": mode, "patience": patience, "minDelta": 10.0}
    trainer = make_trainer({"training": {"epochs": 6, "earlyStopping": stopping}})
    result = trainer.fit()
    assert result.stopped_early
    assert trainer.state.epoch == 1 + patience
    assert len(trainer.state.history) == 1 + patience
    assert trainer.state.best_metric == trainer.state.history[0][monitor]
    assert trainer.state.epochs_without_improvement == patience
    assert trainer.checkpointer.latest_step == 1 + patience


def test_early_stopping_disabled_trains_every_epoch(make_trainer: Build) -> None:
    stopping = {"enabled": False, "patience": 1, "minDelta": 10.0}
    trainer = make_trainer({"training": {"epochs": 3, "earlyStopping": stopping}})
    assert not trainer.fit().stopped_early
    assert trainer.state.epoch == 3


# --- curriculum ------------------------------------------------------------------------------


def test_curriculum_pool_grows_from_the_calmest_samples_to_all(make_trainer: Build) -> None:
    trainer = make_trainer({"training": {"curriculum": {"stages": 3, "strategy": "volatility"}}})
    volatility = trainer.data.train.volatility
    pools = []
    for stage in range(3):
        trainer.state.curriculum_stage = stage
        pool = trainer._train_pool()
        assert pool is not None
        pools.append(pool)
    assert len(pools[0]) < len(pools[1]) < len(pools[2]) == len(trainer.data.train)
    assert set(pools[0]) < set(pools[1]) < set(pools[2])
    for pool in pools[:2]:
        outside = np.setdiff1d(np.arange(len(volatility)), pool)
        assert volatility[pool].max() <= volatility[outside].min()


def test_curriculum_advances_a_stage_per_epoch_and_trains_on_its_pool(
    make_trainer: Build,
) -> None:
    curriculum = {"stages": 3, "minEpochsPerStage": 1}
    trainer = make_trainer({"training": {"epochs": 3, "curriculum": curriculum}})
    sizes = []
    for stage in range(3):
        trainer.state.curriculum_stage = stage
        pool = trainer._train_pool()
        assert pool is not None
        sizes.append(len(pool))
    trainer.state.curriculum_stage = 0
    trainer.fit()
    assert [h.get("curriculum_stage") for h in trainer.state.history] == [0, 1, None]
    assert trainer.state.curriculum_stage == 2
    batch = trainer.spec.training.batch_size
    assert trainer.state.step == sum(math.ceil(s / batch) for s in sizes)


# --- techniques ------------------------------------------------------------------------------


def _dropout_rates(trainer: SupervisedTrainer) -> list[float]:
    return sorted({m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)})


# technique -> (spec overrides, whether it took effect: f(trainer after fit, dtypes of the
# first linear layer's outputs in training mode))
Check = Callable[[SupervisedTrainer, set[torch.dtype]], bool]
TECHNIQUES: dict[str, tuple[dict[str, Any], Check]] = {
    "augmentation": (
        {"training": {"augmentation": {"noiseStd": 0.05, "timeShiftMax": 2}}},
        lambda t, _: (
            not torch.equal(
                t.augment_rng.get_state(), torch.Generator().manual_seed(t.spec.seed).get_state()
            )
        ),
    ),
    "dropoutSchedule": (
        {"training": {"epochs": 2, "dropoutSchedule": {"final": 0.05}}},
        lambda t, _: _dropout_rates(t) == pytest.approx([0.05]),
    ),
    "adversarial": (
        {"training": {"adversarial": {"epsilon": 0.02, "alpha": 0.01, "steps": 2}}},
        lambda t, _: "train_adversarial" in t.state.history[-1],
    ),
    "curriculum": (
        {"training": {"curriculum": {"stages": 2}}},
        lambda t, _: t.state.history[-1]["curriculum_stage"] == 0,
    ),
    "metaLearning": (
        {"training": {"metaLearning": {"tasksPerBatch": 2, "innerSteps": 1}}},
        lambda t, _: "train_query_loss" in t.state.history[-1],
    ),
    "metaLearning-second-order": (
        {"training": {"metaLearning": {"tasksPerBatch": 2, "innerSteps": 1, "firstOrder": False}}},
        lambda t, _: "train_query_loss" in t.state.history[-1],
    ),
    "seq2seq": (
        {"model": {"type": "lstm"}, "training": {"seq2seq": {"outputLength": 3}}},
        lambda t, _: {"train_sequence", "val_sequence"} <= t.state.history[-1].keys(),
    ),
    "bf16": (
        {"training": {"precision": "bf16"}},
        lambda _, dtypes: torch.bfloat16 in dtypes,
    ),
}


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_each_technique_trains_with_finite_losses_and_checkpoints(
    make_trainer: Build, technique: str
) -> None:
    overrides, took_effect = TECHNIQUES[technique]
    trainer = make_trainer({"training": {"epochs": 1}}, overrides)
    dtypes: set[torch.dtype] = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(
        lambda module, _, out: dtypes.add(out.dtype) if module.training else None
    )
    result = trainer.fit()
    epochs = trainer.spec.training.epochs
    assert trainer.state.epoch == epochs
    last = trainer.state.history[-1]
    losses = {k: v for k, v in last.items() if k.endswith(("loss", "total"))}
    assert {"val_loss", "val_total"} <= losses.keys()
    assert any(k.startswith("train_") for k in losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert took_effect(trainer, dtypes)
    # the state, with whatever the technique keeps, is a loadable checkpoint
    assert trainer.checkpointer.latest_step == epochs
    state = trainer.checkpointer.load_latest()
    assert state is not None and state["train_state"]["epoch"] == epochs


def test_meta_learning_clips_gradients(make_trainer: Build) -> None:
    # Plain SGD without weight decay: a parameter moves only by its (clipped) gradient.
    optimizer = {"name": "sgd", "learningRate": 0.1, "weightDecay": 0.0}
    meta = {"tasksPerBatch": 2, "innerSteps": 1}
    trainer = make_trainer(
        {"training": {"epochs": 1, "gradClip": 1e-9, "optimizer": optimizer, "metaLearning": meta}}
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert trainer.state.step > 0
    moved = max(
        float((p.detach() - b).abs().max())
        for p, b in zip(trainer.model.parameters(), before, strict=True)
    )
    assert moved < 1e-6


# --- resume ----------------------------------------------------------------------------------


def test_a_restarted_fine_tune_continues_from_its_own_checkpoint(
    make_trainer: Build, tmp_path: Path
) -> None:
    source = make_trainer({"training": {"epochs": 1}})
    source.fit()
    fine_tune = {
        "training": {"epochs": 2},
        "checkpoint": {"resumeFrom": source.checkpointer.store.uri("")},
    }
    first = make_trainer(fine_tune, checkpoints=tmp_path / "fine-tune")
    first.resume()
    # the source's weights, but a fresh run of its own (epochs, MLflow run, optimizer)
    assert first.state.epoch == 0 and first.state.mlflow_run_id is None
    source_weights = source.model.state_dict()
    assert all(torch.equal(v, source_weights[k]) for k, v in first.model.state_dict().items())
    first.fit()
    restarted = make_trainer(fine_tune, checkpoints=tmp_path / "fine-tune")
    restarted.resume()
    assert restarted.state.epoch == 2  # its own latest, not the source's again


# --- exit codes ------------------------------------------------------------------------------


@pytest.fixture
def isolated_tracking(monkeypatch: pytest.MonkeyPatch, feature_cache: Path) -> Iterator[None]:
    """No outer tracking server, object store or torchrun variables; and MLflow's global
    tracking URI (which train() sets, with the variable) dropped afterwards."""
    for name in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "TRADEWIND_CHECKPOINT_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRADEWIND_CACHE", str(feature_cache))
    yield
    import mlflow

    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _write(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_exit_64_for_a_manifest_that_cannot_run(
    tmp_path: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    repo_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    invalid = _write(tmp_path / "bad.yaml", tiny_manifest({"training": {"epochs": 0}}))
    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["--config", str(invalid), *state]) == EXIT_BAD_CONFIG
    assert "training.epochs" in capsys.readouterr().err
    rl = repo_root / "examples" / "rlrun-quickstart.yaml"
    assert main(["--config", str(rl), *state]) == EXIT_BAD_CONFIG
    assert "expected a TrainingRun" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml"), *state]) == EXIT_BAD_CONFIG
    assert not (tmp_path / "state").exists()


@pytest.mark.usefixtures("isolated_tracking")
def test_exit_66_when_the_data_file_is_missing(
    tmp_path: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "no-such-bars.csv"
    manifest = tiny_manifest()
    manifest["spec"]["data"] = {"source": missing.as_uri(), "lookbackWindow": 10}
    config = _write(tmp_path / "run.yaml", manifest)
    assert main(["--config", str(config), "--state-dir", str(tmp_path / "state")]) == (
        EXIT_DATA_NOT_FOUND
    )
    err = capsys.readouterr().err
    assert "error: data:" in err and "no-such-bars.csv" in err


# --- checkpoints while the object store is unreachable ---------------------------------------


class _FlakyStore(LocalStore):
    """A local store whose writes fail while `failing(key)` says so (MinIO stopped)."""

    def __init__(self, root: Path, failing: Callable[[str], bool]) -> None:
        super().__init__(root)
        self.failing = failing
        self.failures = 0

    def put(self, key: str, data: bytes) -> None:
        if self.failing(key):
            self.failures += 1
            raise StorageError(f"{self.uri(key)}: cannot reach the object store")
        super().put(key, data)


def test_a_checkpoint_is_retried_until_the_store_is_back(
    make_trainer: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    trainer = make_trainer({"training": {"epochs": 2}})
    store = _FlakyStore(tmp_path / "flaky", lambda key: store.failures < 3)
    trainer.checkpointer = Checkpointer(store)
    trainer.fit()
    assert store.failures == 3
    assert trainer.checkpointer.latest_step == 2
    assert trainer.checkpointer.load_latest() is not None


def test_training_goes_on_past_a_checkpoint_the_store_refuses(
    make_trainer: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervised, "SAVE_RETRY_SECONDS", 0.0)
    trainer = make_trainer({"training": {"epochs": 3}})
    store = _FlakyStore(tmp_path / "flaky", lambda key: trainer.state.epoch < 3)
    trainer.checkpointer = Checkpointer(store)
    trainer.fit()  # epochs 1 and 2 are not saved; epoch 3 is (and only then moves latest)
    assert trainer.state.epoch == 3
    assert trainer.checkpointer.latest_step == 3
    assert not any(k.startswith(("step-0000000001", "step-0000000002")) for k in store.list(""))


def test_the_final_checkpoint_is_not_given_up_silently(
    make_trainer: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervised, "SAVE_RETRY_SECONDS", 0.0)
    trainer = make_trainer({"training": {"epochs": 1}})
    trainer.checkpointer = Checkpointer(_FlakyStore(tmp_path / "flaky", lambda key: True))
    with pytest.raises(StorageError):
        trainer.fit()
