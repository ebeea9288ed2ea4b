"""Training-time augmentation of feature windows: Gaussian noise and time shifts."""

from __future__ import annotations

import torch
from torch import Tensor

from tradewind.api.training import AugmentationSpec


def augment(x: Tensor, spec: AugmentationSpec, generator: torch.Generator) -> Tensor:
    """A new [B, T, F] batch where a `spec.probability` fraction of the samples (each drawn
    independently) get Gaussian noise of std `noise_std` and a random shift of up to
    `time_shift_max` bars either way along time, the vacated bars repeating the edge bar.

    All randomness comes from `generator` (on any device), so equal generator states give
    equal results; samples not chosen are returned unchanged.
    """
    batch, length, _ = x.shape
    device = generator.device
    chosen = torch.rand(batch, generator=generator, device=device) < spec.probability
    out = x.clone()
    if spec.noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=device) * spec.noise_std
        mask = chosen.view(batch, 1, 1).to(noise.dtype)
        out = out + (noise * mask).to(device=x.device, dtype=x.dtype)
    if spec.time_shift_max > 0:
        shifts = torch.randint(
            -spec.time_shift_max,
            spec.time_shift_max + 1,
            (batch,),
            generator=generator,
            device=device,
        )
        shifts = torch.where(chosen, shifts, torch.zeros_like(shifts)).to(x.device)
        source = (torch.arange(length, device=x.device) - shifts.unsqueeze(1)).clamp(0, length - 1)
        out = out.gather(1, source.unsqueeze(-1).expand_as(out))
    return out
