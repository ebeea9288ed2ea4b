"""Optimizer and learning-rate schedule from the spec (stepped once per epoch, or after every
optimizer step with `scheduler.interval: batch`)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

from tradewind.api.training import OptimizerSpec, SchedulerSpec


def build_optimizer(params: object, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam or SGD with momentum."""
    lr, wd = spec.learning_rate, spec.weight_decay
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(spec.beta1, spec.beta2))  # type: ignore[arg-type]
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=(spec.beta1, spec.beta2))  # type: ignore[arg-type]
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=spec.momentum)  # type: ignore[arg-type]


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, epochs: int, steps_per_epoch: int = 1
) -> LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The schedule, with `warmupEpochs` of linear warm-up in front; None for `none`.
    `steps_per_epoch` (optimizer steps in an epoch over all the training data) sizes
    onecycle with interval batch."""
    sched = torch.optim.lr_scheduler
    floor = spec.min_learning_rate
    main: LRScheduler | sched.ReduceLROnPlateau | None
    if spec.name == "cosine_warm_restarts":
        main = sched.CosineAnnealingWarmRestarts(
            optimizer, T_0=spec.t0, T_mult=spec.t_mult, eta_min=floor
        )
    elif spec.name == "cosine":
        main = sched.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs - spec.warmup_epochs), eta_min=floor
        )
    elif spec.name == "step":
        main = sched.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    elif spec.name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        steps = epochs * (steps_per_epoch if spec.interval == "batch" else 1)
        main = sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(2, steps))
    elif spec.name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, factor=spec.gamma, patience=spec.patience, min_lr=floor
        )
    else:
        main = None
    if spec.warmup_epochs and main is not None:
        warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=spec.warmup_epochs)
        return sched.SequentialLR(optimizer, [warmup, main], milestones=[spec.warmup_epochs])
    return main


def step_scheduler(scheduler: object, val_loss: float, spec: SchedulerSpec) -> None:
    """At an epoch's end: advance one epoch (plateau watches the validation loss); nothing
    with interval batch."""
    if spec.interval == "batch":
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()  # type: ignore[attr-defined]


def step_scheduler_in_epoch(
    scheduler: object, spec: SchedulerSpec, epoch: int, done: int, steps: int
) -> None:
    """With interval batch, after optimizer step `done` of the `steps` of epoch `epoch`
    (0-based): cosine_warm_restarts moves to the fractional epoch epoch + done / steps;
    onecycle one step, and no further than its last (a curriculum's smaller epochs leave it
    short of its end, never past it)."""
    if spec.interval != "batch" or scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts):
        scheduler.step(epoch + done / max(steps, 1))
    elif (
        isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
        and scheduler.last_epoch + 1 < scheduler.total_steps
    ):
        scheduler.step()
