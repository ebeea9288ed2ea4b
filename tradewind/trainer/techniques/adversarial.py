"""Projected gradient descent (PGD, Madry et al.) on the input windows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tradewind.api.training import AdversarialSpec
from tradewind.trainer.losses import LossFn


@contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Restore batch-norm running statistics on exit, so extra forward passes in training
    mode (the PGD steps) do not move them towards perturbed inputs."""
    saved = {
        name: buffer.clone()
        for module_name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, buffer in (
            (f"{module_name}.{n}", b) for n, b in module.named_buffers(recurse=False)
        )
    }
    try:
        yield
    finally:
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in saved.items():
                buffers[name].copy_(value)


def pgd_perturb(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y_class: Tensor,
    y_ret: Tensor,
    spec: AdversarialSpec,
) -> Tensor:
    """Adversarial inputs x + delta, ||delta||_inf <= epsilon, that increase `loss_fn`.

    `spec.steps` signed-gradient ascent steps of size `alpha` from delta = 0, each projected
    back onto the epsilon ball. The model stays in its train/eval mode; gradients are taken
    with respect to delta only, so no parameter .grad is touched, and batch-norm running
    statistics are restored afterwards. The result is detached. A DistributedDataParallel
    model is unwrapped: PGD needs no gradient sync, and DDP expects one forward per backward.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    x = x.detach()
    delta = torch.zeros_like(x)
    with frozen_norm_statistics(model):
        for _ in range(spec.steps):
            delta.requires_grad_(True)
            loss, _ = loss_fn(model(x + delta), y_class, y_ret)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + spec.alpha * grad.sign()).clamp(-spec.epsilon, spec.epsilon)
    return (x + delta).detach()
