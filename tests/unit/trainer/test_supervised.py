"""SupervisedTrainer on tiny data, in this process: sharding, batches, early stopping,
curriculum, every training technique, and the exit codes of the entry point."""

from __future__ import annotations

import itertools
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
from tradewind.api.training import TrainingSpec
from tradewind.trainer import entrypoint, supervised
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.data.dataset import SupervisedSplit
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.entrypoint import (
    EXIT_BAD_CONFIG,
    EXIT_DATA_NOT_FOUND,
    EXIT_NON_FINITE_LOSS,
    NonFiniteLossError,
    SpecNotRunnableError,
    main,
)
from tradewind.trainer.storage import LocalStore, StorageError
from tradewind.trainer.supervised import (
    Batch,
    BatchMaker,
    SupervisedTrainer,
    check_finite_losses,
    check_precision,
    shard_indices,
)
from tradewind.trainer.tracking import Tracker

pytestmark = pytest.mark.usefixtures("torch_sandbox")

CPU = torch.device("cpu")
Build = Callable[..., SupervisedTrainer]


def _env(rank: int = 0, world_size: int = 1, device: torch.device = CPU) -> DistEnv:
    return DistEnv(rank=rank, local_rank=rank, world_size=world_size, device=device)


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
    """`make_trainer(*spec_overrides, checkpoints=None, device=CPU)`: a trainer of the tiny
    run, alone on `device`, with tracking off and checkpoints in `checkpoints` (default: a
    fresh folder)."""
    monkeypatch.setenv("TRADEWIND_CACHE", str(feature_cache))
    count = 0

    def build(
        *specs: dict[str, Any], checkpoints: Path | None = None, device: torch.device = CPU
    ) -> SupervisedTrainer:
        nonlocal count
        count += 1
        run = parse_resource(tiny_manifest(*specs))
        assert isinstance(run, TrainingRun)
        store = LocalStore(checkpoints or tmp_path / f"checkpoints-{count}")
        env = _env(device=device)
        return SupervisedTrainer(run, env, Checkpointer(store), Tracker(enabled=False))

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

    # The window ending `horizon + 1` bars after a sample ends with the bars its trade holds
    # (it fills at the next bar's close, then holds `horizon` bars).
    col = data.feature_names.index("returns")
    ahead = train.windows[train.window_index + horizon + 1]
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


def test_scheduler_interval_batch_moves_the_rate_after_every_step(make_trainer: Build) -> None:
    schedule = {"name": "cosine_warm_restarts", "t0": 2, "tMult": 1, "interval": "batch"}
    trainer = make_trainer({"training": {"epochs": 2, "scheduler": schedule}})
    rates: list[float] = []
    real = trainer._optimizer_step

    def step(loss: torch.Tensor) -> dict[str, float]:
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return real(loss)

    trainer._optimizer_step = step  # type: ignore[method-assign]
    trainer.fit()
    assert len(rates) > 4 and len(set(rates)) == len(rates)  # a new rate at every step
    assert rates == sorted(rates, reverse=True)  # one cosine cycle over both epochs


def test_early_stopping_disabled_trains_every_epoch(make_trainer: Build) -> None:
    stopping = {"enabled": False, "patience": 1, "minDelta": 10.0}
    trainer = make_trainer({"training": {"epochs": 3, "earlyStopping": stopping}})
    assert not trainer.fit().stopped_early
    assert trainer.state.epoch == 3


# --- the best epoch's weights ------------------------------------------------------------------


def _scripted_val_loss(
    trainer: SupervisedTrainer, losses: dict[int, float], metric: str = "val_loss"
) -> None:
    """The trainer's validation reports `losses[epoch]` (0-based) as `metric`; the test
    split is scored for real."""
    real = trainer.validate

    def validate(split: SupervisedSplit, prefix: str = "val") -> dict[str, float]:
        metrics = real(split, prefix)
        return metrics | {metric: losses[trainer.state.epoch]} if prefix == "val" else metrics

    trainer.validate = validate  # type: ignore[method-assign]


def _weights_equal(trainer: SupervisedTrainer, step: int) -> bool:
    saved = trainer.checkpointer.load_step(step)["model"]
    return all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())


LOSSES = {0: 1.0, 1: 0.5, 2: 0.9, 3: 0.95}
"""Epoch 2 (1-based) is the best by val_loss."""
NO_STOP = {"enabled": False}


@pytest.mark.parametrize("restore", [True, False])
def test_the_report_reads_the_best_epochs_weights_unless_told_not_to(
    make_trainer: Build, restore: bool
) -> None:
    stopping = NO_STOP | {"restoreBestWeights": restore}
    trainer = make_trainer({"training": {"epochs": 4, "earlyStopping": stopping}})
    _scripted_val_loss(trainer, LOSSES)
    result = trainer.fit()
    assert trainer.best_epoch() == 2 and trainer.checkpointer.best_step == 2
    reported = 2 if restore else 4
    assert _weights_equal(trainer, reported) and not _weights_equal(trainer, 6 - reported)
    assert result.metrics["reported_epoch"] == reported
    assert result.metrics["val_loss"] == LOSSES[reported - 1]
    assert result.metrics["epoch"] == 4  # trained for all four
    assert result.metrics["test_loss"] == trainer.validate(trainer.data.test, "test")["test_loss"]
    assert trainer.checkpointer.latest_step == 4  # resuming continues from the last epoch


def test_the_latest_logged_validation_metrics_are_the_reported_epochs(
    make_trainer: Build,
) -> None:
    """A Sweep's objective is a metric's latest value in MLflow (the highest step): with the
    best epoch's weights reported, it is that epoch's val_loss, not the last epoch's."""
    trainer = make_trainer({"training": {"epochs": 4, "earlyStopping": NO_STOP}})
    _scripted_val_loss(trainer, LOSSES)
    logged: list[tuple[int, dict[str, float]]] = []
    trainer.tracker.metrics = lambda m, step=None: logged.append((step or 0, dict(m)))  # type: ignore[method-assign]
    trainer.fit()
    latest: dict[str, tuple[int, float]] = {}
    for step, metrics in logged:  # MLflow's latest: the highest step, the later call on a tie
        for key, value in metrics.items():
            if key not in latest or step >= latest[key][0]:
                latest[key] = (step, value)
    assert latest["val_loss"] == (5, LOSSES[1])
    assert [v for s, m in logged for k, v in m.items() if k == "val_loss" and s <= 4] == list(
        LOSSES.values()
    )  # the curve itself is unchanged


@pytest.mark.parametrize(("mode", "best"), [("auto", 2), ("max", 2), ("min", 1)])
def test_mode_auto_maximises_accuracy(make_trainer: Build, mode: str, best: int) -> None:
    stopping = NO_STOP | {"monitor": "val_accuracy", "mode": mode}
    trainer = make_trainer({"training": {"epochs": 4, "earlyStopping": stopping}})
    _scripted_val_loss(trainer, {0: 0.40, 1: 0.60, 2: 0.50, 3: 0.45}, "val_accuracy")
    result = trainer.fit()
    assert trainer.best_epoch() == best and trainer.checkpointer.best_step == best
    assert result.metrics["reported_epoch"] == best


def test_a_resumed_run_reads_the_best_epochs_weights_from_its_checkpoint(
    make_trainer: Build, tmp_path: Path
) -> None:
    first = make_trainer(
        {"training": {"epochs": 2, "earlyStopping": NO_STOP}}, checkpoints=tmp_path
    )
    _scripted_val_loss(first, LOSSES)
    first.fit()
    resumed = make_trainer(
        {"training": {"epochs": 4, "earlyStopping": NO_STOP}}, checkpoints=tmp_path
    )
    resumed.resume()
    _scripted_val_loss(resumed, LOSSES)
    result = resumed.fit()
    assert resumed.best_weights is None  # the best epoch came before the restart
    assert result.metrics["reported_epoch"] == 2 and _weights_equal(resumed, 2)


def test_without_the_best_epochs_weights_the_last_are_reported_with_a_warning(
    make_trainer: Build, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {"training": {"epochs": 3, "earlyStopping": NO_STOP}, "checkpoint": {"interval": 3}}
    first = make_trainer(spec, checkpoints=tmp_path)  # saves epoch 3 only: not the best, 2
    _scripted_val_loss(first, LOSSES)
    first.fit()
    resumed = make_trainer(spec | {"training": {"epochs": 4, "earlyStopping": NO_STOP}},
                           checkpoints=tmp_path)  # fmt: skip
    resumed.resume()
    _scripted_val_loss(resumed, LOSSES)
    result = resumed.fit()
    assert result.metrics["reported_epoch"] == 4 and _weights_equal(resumed, 4)
    assert "the weights of epoch 2 (the best val_loss) are neither kept here" in caplog.text


def test_walk_forward_rows_name_their_bars_and_the_models_risk(make_trainer: Build) -> None:
    trainer = make_trainer({"training": {"epochs": 1}, "evaluation": {"walkForwardStep": 20}})
    trainer.fit()
    _, rows = trainer.backtest(trainer.data.test)
    bars = np.unique(trainer.data.test.timestamps)
    assert len(rows) == math.ceil(len(bars) / 20) > 1
    assert rows[0]["test_from"] == str(bars[0])[:10] and rows[-1]["test_to"] == str(bars[-1])[:10]
    for row, after in itertools.pairwise(rows):
        assert row["test_from"] <= row["test_to"] < after["test_from"]
    for row in rows:
        assert 0.0 <= row["model_max_drawdown"] <= 1.0 and 0.0 <= row["model_win_rate"] <= 1.0


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


def test_curriculum_trains_each_stage_on_its_calmest_share_and_advances_per_epoch(
    make_trainer: Build,
) -> None:
    curriculum = {"stages": 3, "minEpochsPerStage": 1, "strategy": "volatility"}
    trainer = make_trainer({"training": {"epochs": 3, "curriculum": curriculum}})
    recorder = _BatchRecorder.install(trainer)
    trainer.fit()
    assert trainer.state.curriculum_stage == 2
    volatility = trainer.data.train.volatility
    for epoch in range(3):
        calmest = np.flatnonzero(volatility <= np.quantile(volatility, (epoch + 1) / 3))
        assert sorted(recorder.indices_of_epoch(epoch)) == calmest.tolist(), epoch
    assert len(recorder.indices_of_epoch(2)) == len(volatility)


@pytest.mark.parametrize(
    ("bars", "metric", "values"),
    [
        # the guide's progression criteria: a rising accuracy bar per stage
        (
            {"progressMetric": "val_accuracy", "stageThresholds": [0.55, 0.6]},
            "val_accuracy",
            [0.50, 0.56, 0.58, 0.62, 0.70],
        ),
        ({"progressThreshold": 0.7}, "val_loss", [0.9, 0.65, 0.8, 0.6, 0.5]),
    ],
)
def test_curriculum_progresses_when_the_validation_metric_reaches_the_stages_bar(
    make_trainer: Build, bars: dict[str, object], metric: str, values: list[float]
) -> None:
    curriculum = {"stages": 3, "minEpochsPerStage": 1, **bars}
    training = {"epochs": 5, "curriculum": curriculum, "earlyStopping": NO_STOP}
    trainer = make_trainer({"training": training})
    _scripted_val_loss(trainer, dict(enumerate(values)), metric)
    trainer.fit()
    assert [h["curriculum_stage"] for h in trainer.state.history] == [0, 0, 1, 1, 2]


def test_a_curriculum_that_never_reached_all_the_data_says_so(
    make_trainer: Build, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = {"stages": 3, "minEpochsPerStage": 1, "progressMetric": "val_accuracy",
                   "stageThresholds": [0.5, 1.0]}  # fmt: skip
    stopping = NO_STOP | {"monitor": "val_accuracy"}  # the best is the last epoch, stage 2
    training = {"epochs": 3, "curriculum": unreachable, "earlyStopping": stopping}
    trainer = make_trainer({"training": training})
    _scripted_val_loss(trainer, {0: 0.6, 1: 0.7, 2: 0.8}, "val_accuracy")
    with caplog.at_level("WARNING", logger=supervised.log.name):
        trainer.fit()
    assert [h["curriculum_stage"] for h in trainer.state.history] == [0, 1, 1]
    assert "curriculum stage 2 of 3" in caplog.text and "easiest 67%" in caplog.text


@pytest.mark.parametrize("source", ["synthetic", "stocks"])
def test_regime_curriculum_stages_are_distinct_and_take_the_calmer_regimes_first(
    make_trainer: Build, source: str
) -> None:
    """The synthetic source knows its regimes; real bars' are read from their prices."""
    stages = 3
    stocks = {"source": "stocks", "symbols": ["IBM"], "synthetic": None}
    data = {} if source == "synthetic" else {"data": stocks}
    curriculum = {"stages": stages, "strategy": "regime"}
    trainer = make_trainer({"training": {"curriculum": curriculum}, **data})
    regimes = trainer.data.train.regimes
    assert len(np.unique(regimes)) >= (2 if source == "synthetic" else 3)
    pools = []
    for stage in range(stages):
        trainer.state.curriculum_stage = stage
        pool = trainer._train_pool()
        assert pool is not None
        pools.append(set(pool.tolist()))
        outside = np.setdiff1d(np.arange(len(regimes)), pool)
        if len(outside):
            assert regimes[pool].max() <= regimes[outside].min(), stage
    assert pools[0] < pools[1] < pools[2] == set(range(len(regimes)))


# --- techniques ------------------------------------------------------------------------------


class _BatchRecorder:
    """Stands in for a trainer's BatchMaker and keeps every training batch it makes, as
    made (before augmentation), with the epoch and the sample indices it was asked for."""

    def __init__(self, trainer: SupervisedTrainer) -> None:
        self.trainer, self.maker = trainer, trainer.batches
        self.calls: list[tuple[int, np.ndarray]] = []
        self.batches: list[Batch] = []

    @classmethod
    def install(cls, trainer: SupervisedTrainer) -> _BatchRecorder:
        recorder = cls(trainer)
        trainer.batches = recorder  # type: ignore[assignment]
        return recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.maker, name)

    def __call__(
        self, split: SupervisedSplit, indices: np.ndarray, batch_size: int
    ) -> Iterator[Batch]:
        training = split is self.trainer.data.train
        if training:
            self.calls.append((self.trainer.state.epoch, indices.copy()))
        for batch in BatchMaker.__call__(self.maker, split, indices, batch_size):
            if training:
                self.batches.append(dict(batch))
            yield batch

    def indices_of_epoch(self, epoch: int) -> list[int]:
        return [int(i) for e, idx in self.calls if e == epoch for i in idx]


def _training_forwards(trainer: SupervisedTrainer) -> list[tuple[Any, ...]]:
    """The positional arguments of every forward pass the model makes in training mode."""
    calls: list[tuple[Any, ...]] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:
            calls.append(args)

    trainer.model.register_forward_pre_hook(record)
    return calls


# technique -> spec overrides; what each one does is asserted by the tests after this one
TECHNIQUES: dict[str, dict[str, Any]] = {
    "augmentation": {"training": {"augmentation": {"noiseStd": 0.05, "timeShiftMax": 2}}},
    "dropoutSchedule": {"training": {"epochs": 2, "dropoutSchedule": {"final": 0.05}}},
    "adversarial": {"training": {"adversarial": {"epsilon": 0.02, "alpha": 0.01, "steps": 2}}},
    "curriculum": {"training": {"curriculum": {"stages": 2}}},
    "metaLearning": {"training": {"metaLearning": {"tasksPerBatch": 2, "innerSteps": 1}}},
    "metaLearning-second-order": {
        "training": {"metaLearning": {"tasksPerBatch": 2, "innerSteps": 1, "firstOrder": False}}
    },
    "seq2seq": {"model": {"type": "lstm"}, "training": {"seq2seq": {"outputLength": 3}}},
    "bf16": {"training": {"precision": "bf16"}},
}


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_each_technique_trains_with_finite_losses_and_checkpoints(
    make_trainer: Build, technique: str
) -> None:
    trainer = make_trainer({"training": {"epochs": 1}}, TECHNIQUES[technique])
    result = trainer.fit()
    epochs = trainer.spec.training.epochs
    assert trainer.state.epoch == epochs
    last = trainer.state.history[-1]
    losses = {k: v for k, v in last.items() if k.endswith(("loss", "total"))}
    assert {"val_loss", "val_total"} <= losses.keys()
    assert any(k.startswith("train_") for k in losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    # the state, with whatever the technique keeps, is a loadable checkpoint
    assert trainer.checkpointer.latest_step == epochs
    state = trainer.checkpointer.load_latest()
    assert state is not None and state["train_state"]["epoch"] == epochs


def test_augmentation_adds_the_configured_noise_to_the_configured_share_of_samples(
    make_trainer: Build,
) -> None:
    noise_std, probability = 0.3, 0.4
    augmentation = {"noiseStd": noise_std, "timeShiftMax": 0, "probability": probability}
    trainer = make_trainer({"training": {"augmentation": augmentation}})
    recorder = _BatchRecorder.install(trainer)
    forwards = _training_forwards(trainer)
    trainer.train_epoch(0)
    clean = torch.cat([b["x"] for b in recorder.batches])
    change = torch.cat([args[0] for args in forwards]) - clean
    perturbed = change.flatten(1).ne(0).any(1)
    n = len(perturbed)
    share = perturbed.float().mean().item()
    assert share == pytest.approx(probability, abs=4 * math.sqrt(probability * 0.6 / n))
    assert change[perturbed].std().item() == pytest.approx(noise_std, rel=0.05)


def test_dropout_anneals_per_epoch_from_the_models_rate_to_the_final_one(
    make_trainer: Build,
) -> None:
    epochs, initial, final = 3, 0.4, 0.1
    trainer = make_trainer(
        {
            "model": {"dropout": initial},
            "training": {"epochs": epochs, "dropoutSchedule": {"final": final}},
        }
    )
    dropouts = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    rates: dict[int, set[float]] = {}
    forwards = _training_forwards(trainer)
    for epoch in range(epochs):
        trainer.train_epoch(epoch)
        assert forwards
        rates[epoch] = {m.p for m in dropouts}
    assert [sorted(rates[e]) for e in range(epochs)] == [
        pytest.approx([initial]),
        pytest.approx([(initial + final) / 2]),
        pytest.approx([final]),
    ]


def test_teacher_forcing_ratio_given_to_the_model_decays_per_epoch(make_trainer: Build) -> None:
    ratio, decay, epochs = 0.8, 0.5, 3
    seq2seq = {"outputLength": 3, "teacherForcingRatio": ratio, "teacherForcingDecay": decay}
    trainer = make_trainer({"model": {"type": "lstm"}, "training": {"seq2seq": seq2seq}})
    forwards = _training_forwards(trainer)
    given: list[list[float]] = []
    for epoch in range(epochs):
        forwards.clear()
        trainer.train_epoch(epoch)
        assert forwards and all(args[1] is not None for args in forwards)  # targets fed
        given.append(sorted({args[2] if len(args) > 2 else 0.0 for args in forwards}))
    assert given == [pytest.approx([ratio * decay**epoch]) for epoch in range(epochs)]


def test_gradients_reach_the_optimizer_clipped_to_grad_clip(
    make_trainer: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = 0.01
    trainer = make_trainer({"training": {"gradClip": clip}})
    step = trainer.optimizer.step
    norms: list[float] = []

    def measured_step(*args: Any, **kwargs: Any) -> Any:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.nn.utils.get_total_norm(grads)))
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", measured_step)
    metrics = trainer.train_epoch(0)
    assert len(norms) == trainer.state.step > 0
    assert max(norms) <= clip * (1 + 1e-5)
    assert metrics["train_grad_norm"] > 10 * clip  # the raw gradients did need clipping


def test_adversarial_training_mixes_in_the_loss_of_pgd_inputs_with_its_weight(
    make_trainer: Build,
) -> None:
    weight = 0.3
    adversarial = {"epsilon": 0.05, "alpha": 0.02, "steps": 2, "weight": weight}
    trainer = make_trainer({"training": {"adversarial": adversarial}})
    metrics = trainer.train_epoch(0)
    clean, attacked = metrics["train_total"], metrics["train_adversarial"]
    assert attacked > clean  # PGD found inputs the model does worse on
    assert metrics["train_loss"] == pytest.approx((1 - weight) * clean + weight * attacked)


def test_bf16_autocasts_the_training_forward_pass(make_trainer: Build) -> None:
    trainer = make_trainer({"model": {"type": "cnn"}, "training": {"precision": "bf16"}})
    dtypes: set[torch.dtype] = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, _, out: dtypes.add(out.dtype))
    trainer.train_epoch(0)
    assert dtypes == {torch.bfloat16}


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


# --- precision -------------------------------------------------------------------------------


def test_fp16_is_refused_without_cuda_and_with_maml(make_trainer: Build) -> None:
    with pytest.raises(SpecNotRunnableError, match="fp16 needs a CUDA device"):
        make_trainer({"device": "cuda", "training": {"precision": "fp16"}})
    maml = TrainingSpec.model_validate({"precision": "fp16", "metaLearning": {}})
    with pytest.raises(SpecNotRunnableError, match=r"not supported with training\.metaLearning"):
        check_precision(maml, cuda=True)
    check_precision(TrainingSpec.model_validate({"precision": "fp16"}), cuda=True)
    check_precision(TrainingSpec.model_validate({"precision": "bf16"}), cuda=False)


def _cpu_scaler() -> torch.amp.GradScaler:
    """An enabled CPU scaler: on the CPU, it stands in for fp16's CUDA one (the same calls,
    the same state)."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)


def test_the_loop_clips_unscaled_gradients_and_skips_a_step_that_overflowed(
    make_trainer: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = 0.01
    trainer = make_trainer({"training": {"gradClip": clip}})
    assert not trainer.scaler.is_enabled()  # fp32: a pass-through
    trainer.scaler = _cpu_scaler()
    overflowed: list[bool] = []

    def overflow_once(grad: torch.Tensor) -> torch.Tensor:
        if overflowed:
            return grad
        overflowed.append(True)
        return torch.full_like(grad, math.inf)

    next(trainer.model.parameters()).register_hook(overflow_once)
    step, steps, norms = trainer.optimizer.step, [], []

    def measured_step(*args: Any, **kwargs: Any) -> Any:
        steps.append(trainer.state.step)
        norms.append(
            float(
                torch.nn.utils.get_total_norm(
                    [p.grad for p in trainer.model.parameters() if p.grad is not None]
                )
            )
        )
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", measured_step)
    metrics = trainer.train_epoch(0)
    assert overflowed and steps == list(range(1, trainer.state.step))  # the first skipped
    assert norms == pytest.approx([clip] * len(norms), rel=1e-4)  # clipped after unscaling
    assert math.isfinite(metrics["train_grad_norm"]) and metrics["train_grad_norm"] > clip
    assert trainer.scaler.get_scale() > 2.0**10  # backed off once, then grew


def test_the_grad_scaler_state_is_checkpointed(make_trainer: Build, tmp_path: Path) -> None:
    trainer = make_trainer(checkpoints=tmp_path / "run")
    assert trainer.state_dict()["grad_scaler"] == {}  # fp32: nothing to save
    trainer.scaler = _cpu_scaler()
    metrics = trainer.train_epoch(0)
    saved = trainer.scaler.state_dict()
    assert saved["scale"] > 2.0**10 and metrics["train_loss_scale"] > 2.0**10  # it grew
    trainer.checkpointer.save(1, trainer.state_dict(), None, "min")
    resumed = make_trainer(checkpoints=tmp_path / "run")
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.resume()
    assert resumed.scaler.state_dict() == saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 trains on CUDA only")
def test_fp16_trains_in_half_precision_and_resumes_its_loss_scale(
    make_trainer: Build, tmp_path: Path
) -> None:
    cuda = torch.device("cuda", 0)
    fp16 = {"device": "cuda", "training": {"epochs": 1, "precision": "fp16"}}
    trainer = make_trainer(fp16, checkpoints=tmp_path / "run", device=cuda)
    dtypes: set[torch.dtype] = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(
        lambda module, _, out: dtypes.add(out.dtype) if module.training else None
    )
    trainer.fit()
    assert trainer.scaler.is_enabled() and dtypes == {torch.float16}
    assert math.isfinite(trainer.state.history[-1]["train_loss"])
    assert "train_loss_scale" in trainer.state.history[-1]
    resumed = make_trainer(fp16, checkpoints=tmp_path / "run", device=cuda)
    resumed.resume()
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()


# --- divergence ------------------------------------------------------------------------------


def test_a_nan_training_loss_stops_the_run_before_that_epoch_is_saved(make_trainer: Build) -> None:
    trainer = make_trainer({"training": {"epochs": 3}})

    def poison(epoch: int, metrics: dict[str, float]) -> None:
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(math.nan)

    with pytest.raises(NonFiniteLossError, match=r"train_loss=nan.* in epoch 2: training diverged"):
        trainer.fit(on_epoch=poison)
    assert trainer.state.epoch == 1 and trainer.checkpointer.latest_step == 1


def test_only_losses_count_as_divergence() -> None:
    with pytest.raises(NonFiniteLossError, match="val_loss=inf in epoch 4"):
        check_finite_losses({"train_loss": 0.5, "val_loss": math.inf}, epoch=3)
    # an fp16 step the scaler skipped has an infinite gradient norm; that is not divergence
    check_finite_losses({"train_loss": 0.5, "train_grad_norm": math.inf}, epoch=3)


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


def test_exit_64_when_fp16_is_asked_where_there_is_no_cuda(
    tmp_path: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fp16 = tiny_manifest({"device": "cuda", "training": {"precision": "fp16"}})
    config = _write(tmp_path / "run.yaml", fp16)
    assert main(["--config", str(config), "--state-dir", str(tmp_path / "state")]) == (
        EXIT_BAD_CONFIG
    )
    assert "training.precision fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_exit_65_with_the_reason_when_the_loss_is_not_finite(
    tmp_path: Path,
    tiny_manifest: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said = "train_loss=nan in epoch 2: training diverged"

    def diverging(*args: Any, **kwargs: Any) -> None:
        raise NonFiniteLossError(said)

    monkeypatch.setattr(entrypoint, "train", diverging)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # the kubelet's file in a pod
    monkeypatch.setattr(entrypoint, "TERMINATION_LOG", termination_log)
    config = _write(tmp_path / "run.yaml", tiny_manifest())
    assert main(["--config", str(config), "--state-dir", str(tmp_path / "state")]) == (
        EXIT_NON_FINITE_LOSS
    )
    assert f"error: {said}" in capsys.readouterr().err
    assert termination_log.read_text() == f"error: {said}"


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


def test_maml_adapts_per_symbol_at_evaluation_and_scores_only_the_later_test_bars(
    make_trainer: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = 20
    meta = {"tasksPerBatch": 2, "innerSteps": 1, "adaptationBars": bars, "adaptationSteps": 3}
    trainer = make_trainer({"training": {"epochs": 1, "metaLearning": meta}})
    backtested: list[Any] = []
    backtest = supervised.bt.backtest
    monkeypatch.setattr(
        supervised.bt,
        "backtest",
        lambda predicted, split, *args: (
            backtested.append(split) or backtest(predicted, split, *args)
        ),
    )
    result = trainer.fit()
    metrics = result.metrics
    assert {"test_loss", "test_adapted_loss", "test_unadapted_loss"} <= metrics.keys()
    assert {"test_adapted_accuracy", "backtest_adapted_sharpe", "backtest_unadapted_sharpe"} <= (
        metrics.keys()
    )
    assert metrics["test_adapted_loss"] != metrics["test_unadapted_loss"]
    # the un-adapted and adapted backtests run on the same scored samples, then the plain one
    unadapted, adapted, whole = backtested
    np.testing.assert_array_equal(adapted.timestamps, unadapted.timestamps)
    test = trainer.data.test
    assert whole is test
    gap = trainer.spec.data.prediction_horizon + 1 + trainer.spec.data.split.embargo
    for symbol in np.unique(test.symbol_ids):
        times = np.sort(test.timestamps[test.symbol_ids == symbol])
        scored = adapted.timestamps[adapted.symbol_ids == symbol]
        np.testing.assert_array_equal(np.sort(scored), times[bars + gap :])


# --- retraining evaluations ------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_tracking")
def test_cross_validation_logs_its_pooled_figures_and_fold_spread_as_run_metrics(
    tmp_path: Path, tiny_manifest: Callable[..., dict[str, Any]]
) -> None:
    """The guide's CV score (mean and std over folds) and the pooled Sharpe ratio are run
    metrics, so a Sweep can select on them without reading the test split."""
    import mlflow

    from tradewind.api import parse_resource

    manifest = tiny_manifest({"training": {"epochs": 1}, "evaluation": {"cvSplits": 3}})
    run = parse_resource(manifest)
    result = entrypoint.train(run, tmp_path)
    folds = [r for r in result.folds["cross_validation"] if r["fold"] != "pooled"]
    assert len(folds) == 3
    accuracy = [r["test_accuracy"] for r in folds]
    logged = mlflow.get_run(result.mlflow_run_id).data.metrics
    for metrics in (result.metrics, logged):
        assert metrics["cv_accuracy"] == pytest.approx(np.mean(accuracy))
        assert metrics["cv_accuracy_std"] == pytest.approx(np.std(accuracy))
        assert metrics["cv_sharpe_std"] == pytest.approx(np.std([r["model_sharpe"] for r in folds]))
        assert metrics["cv_sharpe_ci_low"] <= metrics["cv_sharpe"] <= metrics["cv_sharpe_ci_high"]
        assert 0.0 <= metrics["cv_psr"] <= 1.0
        # the guide's walk-forward risk figures: per fold, and over the folds
        assert metrics["cv_win_rate"] == pytest.approx(
            np.mean([r["model_win_rate"] for r in folds])
        )
        assert metrics["cv_max_drawdown"] >= max(r["model_max_drawdown"] for r in folds) - 1e-12
    assert all(0.0 <= r["model_max_drawdown"] < 1.0 for r in folds)
    assert not any(k.startswith("walk_forward_") for k in logged)
