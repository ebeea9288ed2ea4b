"""The supervised training loop of a TrainingRun, readable top to bottom:

load data -> build model -> resume from the latest checkpoint -> for each epoch: train,
validate, log, checkpoint, maybe stop -> test and backtest -> log the model.

Runs alone or under torchrun (DDP, one shard of every epoch per rank). Rank 0 owns the side
effects: checkpoints, MLflow, the progress bar.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tradewind.api.resources import TrainingRun
from tradewind.api.training import TrainingSpec
from tradewind.trainer import backtest as bt
from tradewind.trainer import distributed as dist_utils
from tradewind.trainer.checkpoint import Checkpointer, rng_state, set_rng_state
from tradewind.trainer.data.dataset import (
    SupervisedDataset,
    SupervisedSplit,
    build_dataset,
    purge_gap,
)
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.entrypoint import NonFiniteLossError, SpecNotRunnableError
from tradewind.trainer.folds import subset
from tradewind.trainer.losses import MultiTaskLoss
from tradewind.trainer.models import TradingModel, build_model
from tradewind.trainer.optim import (
    build_optimizer,
    build_scheduler,
    step_scheduler,
    step_scheduler_in_epoch,
)
from tradewind.trainer.storage import StorageError
from tradewind.trainer.techniques.adversarial import pgd_perturb
from tradewind.trainer.techniques.augmentation import augment
from tradewind.trainer.techniques.maml import AdaptationTask, adapt, adaptation_tasks, maml_step
from tradewind.trainer.techniques.schedules import dropout_at, teacher_forcing_at
from tradewind.trainer.tracking import TAG_BEST, TAG_LATEST, Tracker

SAVE_RETRY_SECONDS = 600.0
"""How long the last checkpoint of a run is retried while the object store is unreachable
(one between epochs: a twentieth of it)."""

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """What a checkpoint restores besides the model and optimizer."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    epochs_without_improvement: int = 0
    curriculum_stage: int = 0
    mlflow_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Result:
    """What a finished run reports (status, the CLI's summary table)."""

    metrics: dict[str, float]
    backtest: dict[str, dict[str, float]]
    walk_forward: list[dict[str, Any]]
    latest_checkpoint: str | None
    best_checkpoint: str | None
    mlflow_run_id: str | None
    mlflow_url: str | None
    mlflow_tracking_uri: str | None
    stopped_early: bool
    folds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Retraining evaluations (cross_validation, walk_forward_retrained), when asked for."""


def check_precision(training: TrainingSpec, cuda: bool) -> None:
    """Refuse precision fp16 where it cannot run: with metaLearning (MAML trains in fp32,
    its inner-loop gradients not loss-scaled) and without a CUDA device (`cuda` false)."""
    if training.precision != "fp16":
        return
    if training.meta_learning is not None:
        raise SpecNotRunnableError(
            "training.precision fp16 is not supported with training.metaLearning "
            "(MAML trains in fp32): use precision fp32"
        )
    if not cuda:
        raise SpecNotRunnableError(
            "training.precision fp16 needs a CUDA device and none is visible: use bf16 or "
            "fp32, or run with device cuda where a GPU is"
        )


def check_finite_losses(metrics: dict[str, float], epoch: int) -> None:
    """Stop the run when a loss of the epoch (`*_loss`, means across ranks, so every rank
    stops together) is NaN or infinite: no checkpoint of the diverged weights is saved."""
    bad = sorted(
        f"{k}={v}" for k, v in metrics.items() if k.endswith("loss") and not math.isfinite(v)
    )
    if bad:
        raise NonFiniteLossError(
            f"{', '.join(bad)} in epoch {epoch + 1}: training diverged, and a restart from the "
            "latest checkpoint would diverge again. Lower training.optimizer.learningRate, "
            "set training.gradClip, or look for NaN or infinite values in the data"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class BatchMaker:
    """Batches gathered straight from the window view (one copy per batch, no DataLoader).

    Returns are divided by `ret_scale` (their training std) so the regression, uncertainty
    and sequence terms are on a unit scale. With seq2seq, `y_seq` holds the (normalised)
    returns of the `seq_len` bars the trade holds after its fill at the next bar: the last
    row of the windows that end 2..seq_len+1 bars later."""

    device: torch.device
    ret_scale: float = 1.0
    seq_len: int = 0
    returns_col: int = 0

    def __call__(
        self, split: SupervisedSplit, indices: np.ndarray, batch_size: int
    ) -> Iterator[Batch]:
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            batch = {
                "x": torch.from_numpy(split.inputs(idx)),
                "y_class": torch.from_numpy(split.labels[idx]),
                "y_ret": torch.from_numpy(split.forward_returns[idx] / self.ret_scale),
            }
            if self.seq_len:
                # the bars the trade holds: it fills at t+1, so returns of t+2..t+1+seq_len
                ahead = split.window_index[idx][:, None] + np.arange(2, self.seq_len + 2)
                batch["y_seq"] = torch.from_numpy(
                    np.ascontiguousarray(split.windows[ahead, -1, self.returns_col])
                )
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def shard_indices(
    n: int, epoch: int, seed: int, env: DistEnv, pool: np.ndarray | None = None
) -> np.ndarray:
    """This rank's shuffled share of an epoch; every rank gets the same count (DDP needs
    equal steps). The order depends only on (seed, epoch), so a resumed epoch replays it."""
    candidates = np.arange(n) if pool is None else pool
    order = np.random.default_rng([seed, epoch]).permutation(candidates)
    per_rank = len(order) // env.world_size
    return order[env.rank * per_rank : (env.rank + 1) * per_rank]


class SupervisedTrainer:
    """Owns the model, optimizer and loop state of one TrainingRun attempt."""

    def __init__(
        self,
        run: TrainingRun,
        env: DistEnv,
        checkpointer: Checkpointer,
        tracker: Tracker,
        data: SupervisedDataset | None = None,
    ) -> None:
        self.run, self.spec, self.env = run, run.spec, env
        check_precision(self.spec.training, cuda=env.device.type == "cuda")
        self.checkpointer, self.tracker = checkpointer, tracker
        seed_everything(self.spec.seed, self.spec.training.deterministic)
        self.data: SupervisedDataset = data or build_dataset(self.spec.data, seed=self.spec.seed)
        seq2seq = self.spec.training.seq2seq
        self.model: TradingModel = build_model(
            self.spec.model, self.data.num_features, self.data.lookback_window, seq2seq
        ).to(env.device)
        self.loss_fn = MultiTaskLoss(self.spec.training.loss_weights, self.spec.model.heads).to(
            env.device
        )
        self.optimizer = build_optimizer(self.model.parameters(), self.spec.training.optimizer)
        self.scheduler = build_scheduler(
            self.optimizer,
            self.spec.training.scheduler,
            self.spec.training.epochs,
            self._steps_per_epoch(),
        )
        self.scaler = torch.amp.GradScaler(
            env.device.type, enabled=self.spec.training.precision == "fp16"
        )
        self.state = TrainState()
        self.best_weights: tuple[int, dict[str, torch.Tensor]] | None = None
        """restoreBestWeights: (epoch, a CPU copy of its weights) of the best epoch so far."""
        self.ddp: nn.Module = self.model
        self.augment_rng = torch.Generator().manual_seed(self.spec.seed)
        returns = self.data.train.forward_returns
        self.batches = BatchMaker(
            env.device,
            ret_scale=float(returns.std()) or 1.0,
            seq_len=seq2seq.output_length if seq2seq else 0,
            returns_col=self.data.feature_names.index("returns") if seq2seq else 0,
        )

    def _steps_per_epoch(self) -> int:
        """Optimizer steps in an epoch over all the training data (a MAML epoch's meta
        steps)."""
        spec = self.spec.training
        if spec.meta_learning is not None:
            return self._meta_steps()
        return math.ceil((len(self.data.train) // self.env.world_size) / spec.batch_size)

    def _meta_steps(self) -> int:
        spec = self.spec.training
        assert spec.meta_learning is not None
        per_step = 2 * spec.batch_size * spec.meta_learning.tasks_per_batch
        return max(1, len(self.data.train) // per_step)

    # --- checkpoint -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "train_state": self.state.__dict__,
            "rng": rng_state(),
            "augment_rng": self.augment_rng.get_state(),
            "normalizer": self.data.normalizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(**state["train_state"])
        set_rng_state(state["rng"])
        self.augment_rng.set_state(state["augment_rng"])
        if state.get("grad_scaler"):  # empty from fp32/bf16 runs and older checkpoints
            self.scaler.load_state_dict(state["grad_scaler"])

    def resume(self) -> None:
        """Continue from the latest checkpoint (`resumeFrom: latest`), another run's
        checkpoint (a URI; once this run has its own, a restart continues from that) or
        start fresh (`none`)."""
        own = self.checkpointer.latest_step is not None
        state = self.checkpointer.resume(self.spec.checkpoint.resume_from)
        if state is None:
            return
        if own or self.spec.checkpoint.resume_from == "latest":
            self.load_state_dict(state)
            log.info("resumed at epoch %d (step %d)", self.state.epoch, self.state.step)
        else:  # another run's checkpoint: its weights, but this run's own fresh training
            self.model.load_state_dict(state["model"])
            log.info("fine-tuning from %s", self.spec.checkpoint.resume_from)

    # --- one epoch --------------------------------------------------------------------

    def _train_pool(self) -> np.ndarray | None:
        """Curriculum: the easiest (stage + 1) / stages of the training samples: the calmest
        windows, or with strategy regime the calmer regimes first (calm, trending, volatile)
        and the calmer windows first within a regime, so that every stage adds samples even
        when there are fewer regimes than stages."""
        cur = self.spec.training.curriculum
        if cur is None:
            return None
        stage = min(self.state.curriculum_stage, cur.stages - 1)
        train = self.data.train
        if cur.strategy == "volatility":
            cutoff = np.quantile(train.volatility, (stage + 1) / cur.stages)
            return np.flatnonzero(train.volatility <= cutoff)
        easiest_first = np.lexsort((train.volatility, train.regimes))
        return np.sort(easiest_first[: math.ceil(len(train) * (stage + 1) / cur.stages)])

    def _loss(self, batch: Batch, teacher_forcing: float) -> tuple[torch.Tensor, dict[str, float]]:
        y_seq = batch.get("y_seq")
        out = self.ddp(batch["x"], y_seq, teacher_forcing)
        return self.loss_fn(out, batch["y_class"], batch["y_ret"], y_seq)  # type: ignore[no-any-return]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard (or the curriculum stage's pool): the means of
        the loss, its terms and the gradient norm over the steps, as `train_*`."""
        spec = self.spec.training
        self.ddp.train()
        if spec.dropout_schedule is not None:
            self.model.set_dropout(
                dropout_at(epoch, spec.epochs, self.spec.model.dropout, spec.dropout_schedule.final)
            )
        if spec.meta_learning is not None:
            return self._maml_epoch(epoch)
        tf = (
            teacher_forcing_at(
                epoch, spec.seq2seq.teacher_forcing_ratio, spec.seq2seq.teacher_forcing_decay
            )
            if spec.seq2seq
            else 0.0
        )
        indices = shard_indices(
            len(self.data.train), epoch, self.spec.seed, self.env, self._train_pool()
        )
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        steps = math.ceil(len(indices) / spec.batch_size)
        for done, batch in enumerate(self.batches(self.data.train, indices, spec.batch_size), 1):
            if spec.augmentation is not None:
                batch["x"] = augment(batch["x"], spec.augmentation, self.augment_rng)
            with self._autocast():
                loss, parts = self._training_loss(batch, tf)
            parts |= self._optimizer_step(loss)
            step_scheduler_in_epoch(self.scheduler, spec.scheduler, epoch, done, steps)
            self.state.step += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
        return {f"train_{k}": v / counts[k] for k, v in totals.items()}

    def _autocast(self) -> torch.autocast:
        """Autocast to bf16 or fp16 as `training.precision` says (off for fp32)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.spec.training.precision)
        return torch.autocast(self.env.device.type, dtype=dtype, enabled=dtype is not None)

    def _training_loss(
        self, batch: Batch, teacher_forcing: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch, mixed with its PGD-perturbed copy's with adversarial training.
        PGD runs before the clean forward pass: it restores the batch-norm statistics in
        place, which would invalidate the graph of a forward pass made before it."""
        adv = self.spec.training.adversarial
        if adv is None:
            return self._loss(batch, teacher_forcing)
        x_adv = pgd_perturb(
            self.ddp, self.loss_fn, batch["x"], batch["y_class"], batch["y_ret"], adv
        )
        loss, parts = self._loss(batch, teacher_forcing)
        adv_loss, _ = self._loss({**batch, "x": x_adv}, teacher_forcing)
        parts["adversarial"] = float(adv_loss.detach())
        return (1 - adv.weight) * loss + adv.weight * adv_loss, parts

    def _optimizer_step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward and step through the grad scaler (a pass-through unless fp16), the
        gradients unscaled before clipping. Returns the gradient norm before clipping, left
        out when not finite (an fp16 step the scaler skips), and the fp16 loss scale."""
        clip = self.spec.training.grad_clip
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        parts: dict[str, float] = {}
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            if math.isfinite(norm):
                parts["grad_norm"] = norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():
            parts["loss_scale"] = self.scaler.get_scale()
        return parts

    def _maml_epoch(self, epoch: int) -> dict[str, float]:
        """MAML: each symbol is a task; support and query are two batches of its samples."""
        spec = self.spec.training
        assert spec.meta_learning is not None
        train = self.data.train
        rng = np.random.default_rng([self.spec.seed, epoch])
        symbols = np.unique(train.symbol_ids)
        results: list[dict[str, float]] = []
        n_meta = self._meta_steps()
        for done in range(1, n_meta + 1):
            tasks = []
            for sym in rng.choice(symbols, size=spec.meta_learning.tasks_per_batch):
                idx = rng.permutation(np.flatnonzero(train.symbol_ids == sym))[
                    : 2 * spec.batch_size
                ]
                half = len(idx) // 2
                support, query = (
                    next(self.batches(train, part, spec.batch_size))
                    for part in (idx[:half], idx[half:])
                )
                tasks.append((support, query))
            results.append(
                maml_step(
                    self.ddp,
                    self.loss_fn,
                    tasks,
                    spec.meta_learning,
                    self.optimizer,
                    grad_clip=spec.grad_clip,
                )
            )
            step_scheduler_in_epoch(self.scheduler, spec.scheduler, epoch, done, n_meta)
            self.state.step += 1
        return {f"train_{k}": float(np.mean([r[k] for r in results])) for k in results[0]}

    @torch.no_grad()
    def predict(self, split: SupervisedSplit) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and predicted returns for every sample of a split."""
        self.model.eval()
        probs, rets = [], []
        for batch in self.batches(split, np.arange(len(split)), 1024):
            out = self.model(batch["x"])
            probs.append(torch.softmax(out.logits.float(), dim=-1).cpu().numpy())
            ret = out.ret if out.ret is not None else torch.zeros(len(batch["x"]))
            rets.append(ret.float().cpu().numpy() * self.batches.ret_scale)
        return np.concatenate(probs), np.concatenate(rets)

    @torch.no_grad()
    def validate(self, split: SupervisedSplit, prefix: str = "val") -> dict[str, float]:
        self.model.eval()
        totals: dict[str, float] = {}
        correct, n = 0, 0
        indices = (
            shard_indices(len(split), 0, self.spec.seed, self.env)
            if self.env.distributed
            else np.arange(len(split))
        )
        for batch in self.batches(split, np.sort(indices), 1024):
            out = self.model(batch["x"])
            loss, parts = self.loss_fn(out, batch["y_class"], batch["y_ret"], batch.get("y_seq"))
            k = len(batch["x"])
            for key, v in {"loss": float(loss), **parts}.items():
                totals[key] = totals.get(key, 0.0) + v * k
            correct += int((out.logits.argmax(-1) == batch["y_class"]).sum())
            n += k
        metrics = {f"{prefix}_{k}": v / max(n, 1) for k, v in totals.items()}
        metrics[f"{prefix}_accuracy"] = correct / max(n, 1)
        return dist_utils.mean_across_ranks(metrics, self.env)

    def example_input(self) -> np.ndarray:
        """A few training windows: the input signature of the logged model."""
        return np.ascontiguousarray(self.data.train.inputs(np.arange(min(4, len(self.data.train)))))

    @torch.no_grad()
    def predict_logits(self, windows: np.ndarray) -> np.ndarray:
        self.model.eval()
        logits = self.model(torch.from_numpy(windows).to(self.env.device)).logits
        return logits.float().cpu().numpy()  # type: ignore[no-any-return]

    # --- the loop -----------------------------------------------------------------------

    def fit(self, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Result:
        spec = self.spec.training
        if self.env.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)
        stopped_early = False
        while self.state.epoch < spec.epochs and not stopped_early:
            epoch = self.state.epoch
            train = dist_utils.mean_across_ranks(self.train_epoch(epoch), self.env)
            val = self.validate(self.data.validation)
            check_finite_losses(train | val, epoch)
            step_scheduler(self.scheduler, val["val_loss"], spec.scheduler)
            metrics = {
                **train,
                **val,
                "epoch": epoch + 1,
                "progress": 100.0 * (epoch + 1) / spec.epochs,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            improved = self._track_best(metrics)
            self._advance_curriculum(metrics)
            self.state.epoch += 1
            self.state.history.append(metrics)
            self._keep_if_best()
            self.tracker.metrics(metrics, step=self.state.epoch)
            self._log_epoch_attention()
            es = spec.early_stopping
            stopped_early = dist_utils.any_rank(
                es.enabled
                and not improved
                and self.state.epochs_without_improvement >= es.patience,
                self.env,
            )
            last = stopped_early or self.state.epoch == spec.epochs
            if self.env.is_main and (self.state.epoch % self.spec.checkpoint.interval == 0 or last):
                self._save_checkpoint(metrics.get(es.monitor), final=last)
            if on_epoch is not None:
                on_epoch(self.state.epoch, metrics)
        return self._finish(stopped_early)

    def _save_checkpoint(self, metric: float | None, final: bool = False) -> None:
        """Save, retrying while the object store is unreachable: a checkpoint between epochs
        is given up after a few tries (training goes on; the next one retries), the final
        one is retried for up to SAVE_RETRY_SECONDS. `latest.json` moves only after a
        complete save, so a failed try never leaves it pointing at a partial checkpoint."""
        mode: Literal["min", "max"] = "max" if self.spec.training.early_stopping.maximize else "min"
        deadline = time.monotonic() + (SAVE_RETRY_SECONDS if final else SAVE_RETRY_SECONDS / 20)
        for attempt in itertools.count(1):
            try:
                self.checkpointer.save(self.state.epoch, self.state_dict(), metric, mode)
                break
            except StorageError as err:
                if time.monotonic() >= deadline:
                    if final:
                        raise
                    log.warning(
                        "checkpoint of epoch %d not saved (%s); training goes on, the next "
                        "checkpoint retries",
                        self.state.epoch,
                        err,
                    )
                    return
                delay = min(2.0 * attempt, 10.0)
                log.warning(
                    "checkpoint of epoch %d failed (%s); retrying in %.0fs",
                    self.state.epoch,
                    err,
                    delay,
                )
                time.sleep(delay)
        latest, best = self.checkpointer.latest_uri, self.checkpointer.best_uri
        self.tracker.tags({TAG_LATEST: latest, TAG_BEST: best})

    def _track_best(self, metrics: dict[str, float]) -> bool:
        es = self.spec.training.early_stopping
        value = metrics.get(es.monitor)
        if value is None:
            return True
        best = self.state.best_metric
        better = best is None or (
            value > best + es.min_delta if es.maximize else value < best - es.min_delta
        )
        if better:
            self.state.best_metric = value
            self.state.epochs_without_improvement = 0
        else:
            self.state.epochs_without_improvement += 1
        return better

    def _advance_curriculum(self, metrics: dict[str, float]) -> None:
        """Log the epoch's stage; move to the next when the stage has had its epochs and
        its validation metric reached the stage's bar."""
        cur = self.spec.training.curriculum
        if cur is None:
            return
        stage = self.state.curriculum_stage
        metrics["curriculum_stage"] = stage
        if stage >= cur.stages - 1:
            return
        epochs_in_stage = sum(1 for h in self.state.history if h.get("curriculum_stage") == stage)
        if epochs_in_stage + 1 >= cur.min_epochs_per_stage and cur.reached(
            stage, metrics[cur.progress_metric]
        ):
            self.state.curriculum_stage += 1
            log.info(
                "curriculum: stage %d of %d from the next epoch (%s %.4g)",
                stage + 2, cur.stages, cur.progress_metric, metrics[cur.progress_metric],
            )  # fmt: skip

    def _warn_if_curriculum_unfinished(self, epoch: int, metrics: dict[str, float]) -> None:
        """Say when the reported weights never trained on all the training samples."""
        cur = self.spec.training.curriculum
        stage = metrics.get("curriculum_stage")
        if cur is None or stage is None or stage >= cur.stages - 1:
            return
        log.warning(
            "the reported weights (epoch %d) come from curriculum stage %d of %d: they trained "
            "on the easiest %.0f%% of the training samples only (the stage's bar on %s was "
            "not reached sooner; lower it or train longer)",
            epoch, stage + 1, cur.stages, 100.0 * (stage + 1) / cur.stages, cur.progress_metric,
        )  # fmt: skip

    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the best monitored validation metric, as the checkpoints
        rank them (no minDelta; a tie goes to the earlier epoch); None when none logged it."""
        es = self.spec.training.early_stopping
        scored = [
            (h[es.monitor], epoch)
            for epoch, h in enumerate(self.state.history, start=1)
            if math.isfinite(h.get(es.monitor, math.nan))
        ]
        if not scored:
            return None
        pick = max if es.maximize else min
        return pick(scored, key=lambda pair: pair[0])[1]

    def _keep_if_best(self) -> None:
        if not self.spec.training.early_stopping.restore_best_weights:
            return
        if self.best_epoch() == self.state.epoch:
            weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            self.best_weights = (self.state.epoch, weights)

    def _restore_best(self) -> int:
        """With restoreBestWeights, load the best epoch's weights (kept in memory, or from its
        checkpoint when the run resumed after it); the epoch whose weights are loaded."""
        last, best = self.state.epoch, self.best_epoch()
        if not self.spec.training.early_stopping.restore_best_weights or best in (None, last):
            return last
        if self.best_weights is not None and self.best_weights[0] == best:
            weights = self.best_weights[1]
        elif best in self.checkpointer.steps():
            weights = self.checkpointer.load_step(best)["model"]
        else:
            log.warning(
                "the weights of epoch %d (the best %s) are neither kept here nor in a "
                "checkpoint; reporting epoch %d's",
                best, self.spec.training.early_stopping.monitor, last,
            )  # fmt: skip
            return last
        self.model.load_state_dict(weights)
        log.info("reporting the weights of epoch %d, the best by validation", best)
        return best

    def _finish(self, stopped_early: bool) -> Result:
        reported = self._restore_best()
        test = self.validate(self.data.test, prefix="test") | self._adapted_test()
        backtest, walk_forward = self.backtest(self.data.test)
        at_reported = self.state.history[reported - 1] if reported > 0 else {}
        self._warn_if_curriculum_unfinished(reported, at_reported)
        validation = {k: v for k, v in at_reported.items() if k.startswith("val_")}
        final = {
            **(self.state.history[-1] if self.state.history else {}),
            **validation,
            **test,
            "reported_epoch": float(reported),
        }
        self.tracker.metrics(
            test
            | {f"backtest_{k}": v for k, v in backtest["model"].items()}
            | {"reported_epoch": float(reported)},
            step=self.state.epoch,
        )
        if reported != self.state.epoch and validation:
            # As MLflow's Keras autolog does for restored weights: the reported epoch's
            # validation metrics once more, a step after the last epoch, so that a metric's
            # latest value (what a Sweep's objective and `status` read) is the reported one's.
            self.tracker.metrics(validation, step=self.state.epoch + 1)
        self.tracker.table(walk_forward, "walk_forward.json")
        if self.env.is_main and self.tracker.enabled:
            self._log_figures()
        return Result(
            metrics=final,
            backtest=backtest,
            walk_forward=walk_forward,
            latest_checkpoint=self.checkpointer.latest_uri,
            best_checkpoint=self.checkpointer.best_uri,
            mlflow_run_id=self.tracker.run_id,
            mlflow_url=self.tracker.url,
            mlflow_tracking_uri=self.tracker.tracking_uri,
            stopped_early=stopped_early,
        )

    def _adapted_test(self) -> dict[str, float]:
        """MAML at evaluation (`metaLearning.adaptationBars`): per symbol of the test split, a
        copy of the model adapted on its first samples and scored on its samples after them
        and the purge gap, beside the un-adapted model on the same samples: `test_adapted_*`,
        `test_unadapted_*` and the backtests `backtest_adapted_*`, `backtest_unadapted_*`."""
        meta = self.spec.training.meta_learning
        if meta is None or not meta.adaptation_bars:
            return {}
        test = self.data.test
        tasks = adaptation_tasks(test, meta.adaptation_bars, purge_gap(self.spec.data))
        if not tasks:
            log.warning("adaptationBars %d leave no test sample to score", meta.adaptation_bars)
            return {}
        models: dict[str, Iterable[nn.Module]] = {
            "unadapted": [self.model] * len(tasks),
            "adapted": (  # one adapted copy alive at a time
                adapt(self.model, self.loss_fn, self._whole_batch(test, t.support), meta)
                for t in tasks
            ),
        }
        scored = subset(test, np.concatenate([t.scored for t in tasks]))
        evaluation = self.spec.evaluation
        metrics: dict[str, float] = {}
        for name, per_task in models.items():
            scores, predicted = self._task_scores(per_task, tasks, test)
            backtest, _ = bt.backtest(
                predicted, scored, self.data.prediction_horizon,
                bt.cost_of(evaluation), evaluation.walk_forward_step, self.spec.seed,
            )  # fmt: skip
            metrics |= {f"test_{name}_{k}": v for k, v in scores.items()}
            metrics |= {f"backtest_{name}_{k}": v for k, v in backtest["model"].items()}
        return metrics

    def _whole_batch(self, split: SupervisedSplit, positions: np.ndarray) -> Batch:
        """The samples at `positions` as one batch."""
        return next(self.batches(split, positions, len(positions)))

    @torch.no_grad()
    def _task_scores(
        self, models: Iterable[nn.Module], tasks: list[AdaptationTask], split: SupervisedSplit
    ) -> tuple[dict[str, float], np.ndarray]:
        """Loss terms and accuracy of each task's model on the task's scored samples (means
        over all of them) and the predicted classes, task after task."""
        totals: dict[str, float] = {}
        predicted = []
        for model, task in zip(models, tasks, strict=True):
            model.eval()
            for batch in self.batches(split, task.scored, 1024):
                out = model(batch["x"])
                loss, parts = self.loss_fn(
                    out, batch["y_class"], batch["y_ret"], batch.get("y_seq")
                )
                classes = out.logits.argmax(-1)
                hits = float((classes == batch["y_class"]).float().mean())
                for key, v in {"loss": float(loss), **parts, "accuracy": hits}.items():
                    totals[key] = totals.get(key, 0.0) + v * len(classes)
                predicted.append(classes.cpu().numpy())
        n = sum(len(t.scored) for t in tasks)
        return {k: v / n for k, v in totals.items()}, np.concatenate(predicted)

    def _log_figures(self) -> None:
        """Loss curves, test confusion matrix, equity curves and attention, to MLflow."""
        import matplotlib.pyplot as plt

        from tradewind.trainer import plots

        test = self.data.test
        predicted = self.predict(test)[0].argmax(-1)
        returns = bt.strategy_equity(
            predicted, test, self.data.prediction_horizon,
            bt.cost_of(self.spec.evaluation), self.spec.seed,
        )  # fmt: skip
        figures = {
            "loss_curves.png": plots.loss_curves(self.state.history),
            "confusion_matrix.png": plots.confusion_matrix(
                test.labels, predicted, self.spec.model.heads.num_classes
            ),
            "equity_curve.png": plots.equity_curves(returns),
        }
        attention = self._mean_attention(test)
        if attention is not None:
            figures["attention.png"] = plots.attention_heatmap(attention)
        for name, figure in figures.items():
            self.tracker.figure(figure, name)
            plt.close(figure)

    def _log_epoch_attention(self) -> None:
        """The epoch's mean attention over validation windows, to TensorBoard and W&B (their
        step sliders show how it forms); MLflow gets the test windows' once, at the end."""
        if not (self.env.is_main and self.tracker.has_step_viewer):
            return
        attention = self._mean_attention(self.data.validation)
        if attention is None:
            return
        import matplotlib.pyplot as plt

        from tradewind.trainer import plots

        figure = plots.attention_heatmap(attention)
        self.tracker.step_figure(figure, "attention_validation.png", self.state.epoch)
        plt.close(figure)

    @torch.no_grad()
    def _mean_attention(self, split: SupervisedSplit) -> np.ndarray | None:
        self.model.eval()
        batch = next(self.batches(split, np.arange(min(256, len(split))), 256), None)
        if batch is None:
            return None
        attention = self.model(batch["x"]).attention
        return None if attention is None else attention.float().mean(0).cpu().numpy()

    def backtest(
        self, split: SupervisedSplit
    ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
        """Model vs buy-and-hold vs random on the split, overall and per walk-forward step."""
        evaluation = self.spec.evaluation
        return bt.backtest(
            self.predict(split)[0].argmax(-1), split, self.data.prediction_horizon,
            bt.cost_of(evaluation), evaluation.walk_forward_step, self.spec.seed,
        )  # fmt: skip
