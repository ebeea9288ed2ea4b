"""A plain PyTorch DDP training script, of the kind written for Kubeflow's PyTorchJob.

It reads only the standard variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT through `init_process_group`'s env:// method) and a checkpoint folder:
TRADEWIND_CHECKPOINT_DIR under Tradewind, else CHECKPOINT_DIR, else ./checkpoints. Rank 0
writes `checkpoint.pt` there after every epoch (to a temporary name, then renamed) and every
rank resumes from it. With MLFLOW_TRACKING_URI set, rank 0 logs to MLflow (under Tradewind,
into the run's own MLflow run: MLFLOW_RUN_ID). Nothing here imports Tradewind.

    torchrun --nproc-per-node=2 examples/ddp/train.py --epochs 3
    tradewind run -f examples/trainingrun-own-code.yaml
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epoch-seconds", type=float, default=0.0, help="simulated work")
    return parser.parse_args()


def checkpoint_dir() -> Path:
    folder = os.environ.get("TRADEWIND_CHECKPOINT_DIR") or os.environ.get("CHECKPOINT_DIR")
    return Path(folder or "checkpoints")


def batches(rank: int, world: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of a fixed synthetic regression, y = x . w + noise."""
    generator = torch.Generator().manual_seed(1000 * epoch + rank)
    w = torch.arange(1.0, 9.0)
    out = []
    for _ in range(8):
        x = torch.randn(32, 8, generator=generator)
        out.append((x, x @ w + 0.1 * torch.randn(32, generator=generator)))
    return out


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    print(f"rank {rank} of {world} (local rank {local_rank})", flush=True)

    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    folder = checkpoint_dir()
    path = folder / "checkpoint.pt"
    start, starts = 0, []
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, starts = int(state["epoch"]), list(state["starts"])
        print(f"resumed from epoch {start} ({path})", flush=True)
    starts.append(start)

    tracking = rank == 0 and bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if tracking:
        import mlflow

        mlflow.start_run()  # Tradewind's run (MLFLOW_RUN_ID) when there is one
        mlflow.log_metric("start_epoch", start, step=start)

    for epoch in range(start, args.epochs):
        total = torch.zeros(1)
        for x, y in batches(rank, world, epoch):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x).squeeze(1), y)
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            total += loss.detach()
        dist.all_reduce(total)  # the mean loss over every rank
        loss_value = total.item() / (8 * world)
        time.sleep(args.epoch_seconds)
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            state = {
                "epoch": epoch + 1,
                "starts": starts,
                "loss": loss_value,
                "model": model.module.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            torch.save(state, folder / "checkpoint.pt.tmp")
            os.replace(folder / "checkpoint.pt.tmp", path)
            print(f"epoch {epoch + 1}/{args.epochs} loss {loss_value:.4f}", flush=True)
            if tracking:
                progress = 100.0 * (epoch + 1) / args.epochs
                metrics = {"loss": loss_value, "epoch": epoch + 1, "progress": progress}
                mlflow.log_metrics(metrics, step=epoch + 1)
        dist.barrier()

    if tracking:
        mlflow.end_run()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
