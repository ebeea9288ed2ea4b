"""Process-group set-up: the same entry point runs alone or under torchrun (DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 owns every side effect: checkpoints, MLflow, printing."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistEnv:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), if any:
    nccl on CUDA, gloo on CPU."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise RuntimeError("spec.device is cuda but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
    )


def mean_across_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average metrics over all ranks (each rank saw a different shard)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / env.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if it is true on one (e.g. early stopping decided by rank 0)."""
    if not env.distributed:
        return flag
    tensor = torch.tensor([int(flag)], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
