"""Model-agnostic meta-learning (MAML, Finn et al. 2017) with torch.func.functional_call:
the meta-update (`maml_step`) and the few-shot adaptation to a new task at evaluation
(`adaptation_tasks`, `adapt`)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from tradewind.api.training import MetaLearningSpec
from tradewind.trainer.data.dataset import SupervisedSplit
from tradewind.trainer.losses import LossFn

Batch = Mapping[str, Tensor]
"""A batch: `x` [B, T, F], `y_class` [B], `y_ret` [B]."""


@contextmanager
def _without_cudnn(disable: bool) -> Iterator[None]:
    """cuDNN RNNs have no double backward, so second-order MAML runs on native kernels.
    Only `enabled` is touched (cudnn.flags() would also reset benchmark/deterministic)."""
    enabled = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = enabled and not disable
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = enabled


def _average_gradients(params: list[Tensor]) -> None:
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:  # every rank must join every all_reduce, used or not
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _batch_loss(
    model: nn.Module, loss_fn: LossFn, params: dict[str, Tensor], batch: Batch
) -> Tensor:
    out = functional_call(model, params, (batch["x"],))
    loss, _ = loss_fn(out, batch["y_class"], batch["y_ret"])
    return loss


def _adapt(
    model: nn.Module,
    loss_fn: LossFn,
    params: dict[str, Tensor],
    support: Batch,
    spec: MetaLearningSpec,
) -> tuple[dict[str, Tensor], float]:
    """Inner loop: `inner_steps` SGD steps on the support batch. Returns the adapted
    parameters and the support loss before adaptation."""
    first_loss = 0.0
    for step in range(spec.inner_steps):
        loss = _batch_loss(model, loss_fn, params, support)
        if step == 0:
            first_loss = loss.item()
        grads = torch.autograd.grad(
            loss, list(params.values()), create_graph=not spec.first_order, allow_unused=True
        )
        params = {
            name: p if g is None else p - spec.inner_learning_rate * g
            for (name, p), g in zip(params.items(), grads, strict=True)
        }
    return params, first_loss


def maml_step(
    model: nn.Module,
    loss_fn: LossFn,
    tasks: Sequence[tuple[Batch, Batch]],
    spec: MetaLearningSpec,
    optimizer: torch.optim.Optimizer,
    *,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One meta-update: adapt a copy of the parameters to each task's support batch, then
    step `optimizer` on the mean query loss of the adapted parameters.

    With `spec.first_order` the inner gradients are constants (FOMAML), otherwise the outer
    gradient flows through them (second derivatives). The model's train/eval mode is left
    as it is. Returns the mean `support_loss` (before adaptation) and `query_loss` (after).

    A DistributedDataParallel model is unwrapped (its hooks expect one forward per
    backward) and its gradients are averaged over the processes before the step.
    """
    if not tasks:
        raise ValueError("maml_step needs at least one (support, query) task")
    distributed = isinstance(model, DistributedDataParallel)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    params: dict[str, Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer.zero_grad(set_to_none=True)
    support_total = query_total = 0.0
    with _without_cudnn(not spec.first_order):
        for support, query in tasks:
            adapted, support_loss = _adapt(model, loss_fn, params, support, spec)
            query_loss = _batch_loss(model, loss_fn, adapted, query)
            # backward per task frees each task's graph before the next one is built
            torch.autograd.backward(query_loss / len(tasks))
            support_total += support_loss
            query_total += query_loss.item()
    if distributed:
        _average_gradients(list(params.values()))
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
    optimizer.step()
    return {"support_loss": support_total / len(tasks), "query_loss": query_total / len(tasks)}


@dataclass(frozen=True)
class AdaptationTask:
    """One symbol of an evaluation split as a new task: positions into the split."""

    symbol: int
    support: npt.NDArray[np.int64]
    """The symbol's first samples in time: what the model adapts on."""
    scored: npt.NDArray[np.int64]
    """The symbol's samples after the support and the purge gap: what is scored."""


def adaptation_tasks(split: SupervisedSplit, bars: int, gap: int) -> list[AdaptationTask]:
    """Per symbol of `split` (in symbol order): its first `bars` samples in time as the
    support, and its samples from position `bars + gap` on as the scored ones. Symbols with
    nothing left to score are left out."""
    if bars < 1 or gap < 0:
        raise ValueError(f"adaptation needs bars >= 1 and gap >= 0, got {bars} and {gap}")
    tasks = []
    for symbol in np.unique(split.symbol_ids).tolist():
        own = np.flatnonzero(split.symbol_ids == symbol)
        ordered = own[np.argsort(split.timestamps[own], kind="stable")]
        if len(ordered) > bars + gap:
            tasks.append(AdaptationTask(int(symbol), ordered[:bars], ordered[bars + gap :]))
    return tasks


def adapt(model: nn.Module, loss_fn: LossFn, support: Batch, spec: MetaLearningSpec) -> nn.Module:
    """A copy of `model` adapted to a new task: `adaptationSteps` (default `innerSteps`)
    plain SGD steps at `innerLearningRate` on the support batch, in training mode as in the
    meta-training inner loop (batch norm on the support's statistics) but without dropout,
    so the adaptation is deterministic. The copy is returned in eval mode; `model`,
    `loss_fn` and their gradients are untouched."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    adapted = copy.deepcopy(model).train()
    for module in adapted.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    params = [p for p in adapted.parameters() if p.requires_grad]
    steps = spec.adaptation_steps or spec.inner_steps
    with torch.enable_grad():
        for _ in range(steps):
            loss, _ = loss_fn(adapted(support["x"]), support["y_class"], support["y_ret"])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(spec.inner_learning_rate * g)
    return adapted.eval()
