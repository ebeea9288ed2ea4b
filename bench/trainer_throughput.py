"""Supervised trainer throughput: this project's data path against a plain DataLoader.

One run, at a TrainingRun's config (default: the quickstart example), same model, loss,
optimizer, batch size, seed and number of steps for every pipeline:

- `BatchMaker (this pipeline)`: build_dataset's read-only window view, batches gathered by
  the trainer's BatchMaker over shard_indices (one copy per batch), as SupervisedTrainer does;
- `device-resident gather`: the normalised rows moved to the device once, windows an unfold
  view of them, batches gathered by index on the device (the --device cuda data path; it
  runs on CPU too);
- `materialised+DataLoader` (baseline): every training window copied up front (np.stack),
  a TensorDataset and a default DataLoader(batch_size, shuffle=True).

Each pipeline runs in its own child process (so its memory is its own); the parent hands
out the timed steps in chunks, rotating the order, so a change in the machine's load (other
jobs on a shared box) hits every pipeline alike. Each reports training samples/s after
warm-up, the step split into data / forward / backward / optimiser (wall clock, synchronised
on CUDA) and memory. The parent counts the FLOPs of one training step (FlopCounterMode,
forward + backward), measures the machine's matmul FLOP/s, prints the tables, writes JSON.

    .venv/bin/python bench/trainer_throughput.py [--config examples/trainingrun-quickstart.yaml]
        [--steps 200] [--device cpu|cuda] [--out bench/results/trainer_throughput.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from tradewind.api.manifest import load_resources
from tradewind.api.resources import TrainingRun
from tradewind.trainer.data.dataset import SupervisedDataset, build_dataset
from tradewind.trainer.distributed import DistEnv
from tradewind.trainer.losses import MultiTaskLoss
from tradewind.trainer.models import build_model
from tradewind.trainer.optim import build_optimizer
from tradewind.trainer.supervised import BatchMaker, seed_everything, shard_indices

PIPELINES = ("BatchMaker (this pipeline)", "device-resident gather", "materialised+DataLoader")
TARGET_PIPELINE = PIPELINES[0]
DATA_TARGET = 0.05
"""Data loading may take at most this fraction of the step time."""
SHARED_CORES = 0.25
"""Other processes' CPU use (cores) above which the table warns that the machine was shared."""
PHASES = ("data", "forward", "backward", "optimiser")
Batch = dict[str, torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("examples/trainingrun-quickstart.yaml"))
    p.add_argument("--steps", type=int, default=200, help="timed steps per pipeline")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--matmul-size", type=int, default=None, help="2048 (cpu), 8192 (cuda)")
    p.add_argument("--out", type=Path, default=Path("bench/results/trainer_throughput.json"))
    p.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=25, help="steps per turn (pipelines alternate)")
    args = p.parse_args(argv)
    if min(args.steps, args.threads, args.chunk) < 1 or args.warmup < 0:
        p.error("--steps, --threads and --chunk must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(
            f"--device cuda: no CUDA device is visible to torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda}); run on a GPU machine or use --device cpu"
        )
    return args


# --- machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, busy CPU-seconds of the whole machine, CPU-seconds of this process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), busy, own.ru_utime + own.ru_stime


def other_load(start: tuple[float, float, float]) -> float:
    """Cores' worth of CPU that other processes used since `start`."""
    end = cpu_snapshot()
    return max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0])


def ru_maxrss_mib() -> float:
    """getrusage's peak RSS. Linux carries it across fork + exec, so in a child it is at
    least the parent's RSS at the fork: a child's own peak is `proc_rss_mib()["VmHWM"]`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def proc_rss_mib() -> dict[str, float]:
    """This process's current (VmRSS) and peak (VmHWM) resident set size."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later VmHWM is a phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def matmul_flops(device: torch.device, n: int, min_seconds: float = 1.0) -> dict[str, Any]:
    """FLOP/s of an n x n float32 matmul (TF32 off), repeated for at least `min_seconds`."""
    torch.backends.cuda.matmul.allow_tf32 = False
    sync = synchronizer(device)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    for _ in range(2):
        a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - start < min_seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            sync()
    sync()
    seconds = time.perf_counter() - start
    return {"size": n, "reps": reps, "flop_per_s": 2 * n**3 * reps / seconds}


# --- the training step ---------------------------------------------------------------------


@dataclass
class Setup:
    """What every pipeline shares: run, data, model, loss, optimizer."""

    run: TrainingRun
    data: SupervisedDataset
    device: torch.device
    ret_scale: float
    model: torch.nn.Module
    loss_fn: MultiTaskLoss
    optimizer: torch.optim.Optimizer


def load_setup(config: Path, device: torch.device) -> Setup:
    """As SupervisedTrainer.__init__: seed, dataset, model (seeded init), loss, optimizer."""
    run = load_resources(config)[0]
    if not isinstance(run, TrainingRun):
        raise SystemExit(f"{config}: expected a TrainingRun, got {type(run).__name__}")
    spec = run.spec
    seed_everything(spec.seed, spec.training.deterministic)
    data = build_dataset(spec.data, seed=spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.num_features, data.lookback_window).to(device)
    loss_fn = MultiTaskLoss(spec.training.loss_weights, spec.model.heads).to(device)
    optimizer = build_optimizer(model.parameters(), spec.training.optimizer)
    ret_scale = float(data.train.forward_returns.std()) or 1.0
    return Setup(run, data, device, ret_scale, model, loss_fn, optimizer)


def train_steps(s: Setup, batches: Iterator[Batch], n: int) -> dict[str, Any]:
    """`n` training steps as SupervisedTrainer.train_epoch takes them (fp32, no techniques),
    each phase timed (wall clock, synchronised on CUDA)."""
    sync, clip = synchronizer(s.device), s.run.spec.training.grad_clip
    times = np.zeros((n, len(PHASES)))
    samples, losses = 0, []
    s.model.train()
    for i in range(n):
        t0 = time.perf_counter()
        batch = next(batches)
        sync()
        t1 = time.perf_counter()
        loss, _ = s.loss_fn(s.model(batch["x"]), batch["y_class"], batch["y_ret"])
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        if clip is not None:
            float(torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip))
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        sync()
        times[i] = (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)
        samples += len(batch["x"])
        losses.append(float(loss.detach()))
    return {"times": times, "samples": samples, "mean_loss": float(np.mean(losses))}


def count_step_flops(s: Setup) -> dict[str, Any]:
    """FLOPs of one training step at the batch size (forward, loss, backward), as
    FlopCounterMode counts them: matmuls, convolutions and attention; elementwise work
    (activations, norms, LSTM gates, the AdamW update) is not counted.

    Counted on a CPU copy of the model with oneDNN off: the fused LSTM kernels (oneDNN's
    mkldnn_rnn_layer on CPU, cuDNN's on CUDA) have no FLOP formula and would count as 0;
    off, nn.LSTM runs as the per-step matmuls FlopCounterMode counts. The math is the same."""
    spec, data = s.run.spec, s.data
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.num_features, data.lookback_window).train()
    loss_fn = MultiTaskLoss(spec.training.loss_weights, spec.model.heads)
    idx = np.arange(min(spec.training.batch_size, len(data.train)))
    batch = next(BatchMaker(torch.device("cpu"), s.ret_scale)(data.train, idx, len(idx)))
    counter = FlopCounterMode(display=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TF32 acceleration on top of oneDNN"
        with torch.backends.mkldnn.flags(enabled=False), counter:
            loss, _ = loss_fn(model(batch["x"]), batch["y_class"], batch["y_ret"])
            loss.backward()
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()}
    total = int(counter.get_total_flops())
    return {"batch": len(idx), "per_step": total, "per_sample": total / len(idx), "by_op": by_op}


# --- the pipelines -------------------------------------------------------------------------


def owning_array(a: np.ndarray) -> np.ndarray:
    """The array that owns the memory a view reads."""
    root, base = a, a.base
    while base is not None:
        if isinstance(base, np.ndarray):
            root = base
        base = getattr(base, "base", None)
    return root


def batchmaker_batches(s: Setup) -> tuple[Iterator[Batch], dict[str, int]]:
    """The trainer's data path: shard_indices per epoch, BatchMaker over the window view."""
    spec, train = s.run.spec, s.data.train
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=s.device)
    make = BatchMaker(s.device, ret_scale=s.ret_scale)
    epochs = (
        make(train, shard_indices(len(train), e, spec.seed, env), spec.training.batch_size)
        for e in itertools.count()
    )
    backing = owning_array(train.windows)
    return itertools.chain.from_iterable(epochs), {"view_backing_rows_bytes": backing.nbytes}


def device_resident_batches(s: Setup) -> tuple[Iterator[Batch], dict[str, int]]:
    """Rows on the device once; windows an unfold view; batches gathered there by index."""
    train, lookback = s.data.train, s.data.lookback_window
    host_rows = np.concatenate([train.windows[0], train.windows[1:, -1]])  # window i: i..i+L-1
    rows = torch.from_numpy(host_rows).to(s.device)
    windows = rows.unfold(0, lookback, 1).transpose(1, 2)  # (n_windows, lookback, features)
    probe = np.linspace(0, len(train.windows) - 1, 7).astype(np.int64)
    if not np.array_equal(windows[torch.from_numpy(probe)].cpu().numpy(), train.windows[probe]):
        raise RuntimeError("device windows differ from the dataset's window view")
    window_index = torch.from_numpy(train.window_index).to(s.device)
    y_class = torch.from_numpy(train.labels).to(s.device)
    y_ret = torch.from_numpy(train.forward_returns / s.ret_scale).to(s.device)
    gen = torch.Generator(device=s.device).manual_seed(s.run.spec.seed)
    batch_size = s.run.spec.training.batch_size

    def epochs() -> Iterator[Batch]:
        while True:
            order = torch.randperm(len(train), generator=gen, device=s.device)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                x = windows[window_index[idx]]
                yield {"x": x, "y_class": y_class[idx], "y_ret": y_ret[idx]}

    resident = sum(t.nbytes for t in (rows, window_index, y_class, y_ret))
    return epochs(), {"device_resident_bytes": resident}


def dataloader_batches(s: Setup) -> tuple[Iterator[Batch], dict[str, int]]:
    """Baseline: all training windows copied up front, TensorDataset + default DataLoader."""
    train = s.data.train
    x = torch.from_numpy(np.stack([train.windows[i] for i in train.window_index]))
    y_class = torch.from_numpy(train.labels)
    y_ret = torch.from_numpy(train.forward_returns / s.ret_scale)
    loader = DataLoader(
        TensorDataset(x, y_class, y_ret),
        batch_size=s.run.spec.training.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.run.spec.seed),
    )

    def epochs() -> Iterator[Batch]:
        while True:
            for xb, cb, rb in loader:
                yield {
                    k: v.to(s.device, non_blocking=True)
                    for k, v in (("x", xb), ("y_class", cb), ("y_ret", rb))
                }

    return epochs(), {"materialised_windows_bytes": x.nbytes}


BATCHES = dict(
    zip(PIPELINES, (batchmaker_batches, device_resident_batches, dataloader_batches), strict=True)
)


class PipelineRun:
    """One pipeline in a child process: set up, then steps in the chunks the parent hands
    out, accumulating phase times, samples, wall time and the machine's other load."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.pipeline
        self.s = load_setup(args.config, torch.device(args.device))
        self.setup_peak = proc_rss_mib()["VmHWM"]
        self.peak_was_reset = reset_peak_rss()
        self.rss_before = proc_rss_mib()["VmRSS"]
        start = time.perf_counter()
        self.batches, self.memory = BATCHES[self.name](self.s)
        self.setup_s = time.perf_counter() - start
        self.times: list[np.ndarray] = []
        self.samples, self.wall, self.other_cpu_s = 0, 0.0, 0.0
        self.loss_sum = 0.0

    def warmup(self, n: int) -> None:
        train_steps(self.s, self.batches, n)
        if self.s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def steps(self, n: int) -> None:
        load_start = cpu_snapshot()
        start = time.perf_counter()
        timed = train_steps(self.s, self.batches, n)
        wall = time.perf_counter() - start
        self.other_cpu_s += other_load(load_start) * wall
        self.wall += wall
        self.times.append(timed["times"])
        self.samples += timed["samples"]
        self.loss_sum += timed["mean_loss"] * n

    def report(self) -> dict[str, Any]:
        times = np.concatenate(self.times)
        phases = times.mean(axis=0) * 1e3
        step_ms = self.wall / len(times) * 1e3
        hwm = proc_rss_mib()["VmHWM"]
        out: dict[str, Any] = {
            "pipeline": self.name,
            "steps": len(times),
            "samples": self.samples,
            "wall_s": self.wall,
            "samples_per_s": self.samples / self.wall,
            "step_ms": step_ms,
            "phase_ms": dict(zip(PHASES, phases.tolist(), strict=True)),
            "phase_sum_ms": float(phases.sum()),
            "data_fraction": float(phases[0] / step_ms),
            "data_ms_p50_p95": np.percentile(times[:, 0] * 1e3, [50, 95]).tolist(),
            "step_ms_p50": float(np.median(times.sum(axis=1)) * 1e3),
            "mean_loss": self.loss_sum / len(times),
            "setup_s": self.setup_s,
            "memory_bytes": self.memory,
            "rss_after_dataset_mib": self.rss_before,
            "peak_rss_mib": max(self.setup_peak, hwm),
            "pipeline_rss_growth_mib": hwm - self.rss_before if self.peak_was_reset else None,
            "ru_maxrss_mib": ru_maxrss_mib(),
            "other_processes_cores": self.other_cpu_s / self.wall,
        }
        if self.s.device.type == "cuda":
            out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        return out


def serve_pipeline(args: argparse.Namespace) -> None:
    """Child process: answer the parent's commands (one per line on stdin) on stdout."""
    run = PipelineRun(args)
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, n = line.strip().partition(" ")
        if command == "warmup":
            run.warmup(int(n))
        elif command == "steps":
            run.steps(int(n))
        elif command == "report":
            print(json.dumps(run.report()), flush=True)
            return
        print("done", flush=True)


# --- the parent ----------------------------------------------------------------------------


class Child:
    """A pipeline's child process and its command line protocol."""

    def __init__(self, args: argparse.Namespace, pipeline: str) -> None:
        cmd = [sys.executable, __file__, "--config", str(args.config), "--device", args.device]
        cmd += ["--threads", str(args.threads), "--pipeline", pipeline]
        self.pipeline = pipeline
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, command: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.pipeline}: child exited with {self.proc.wait()}")
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_pipelines(args: argparse.Namespace, on_idle: Callable[[], None]) -> list[dict[str, Any]]:
    """Every pipeline in its own process, its timed steps interleaved with the others' in
    chunks (rotating order), so a change in the machine's load hits all of them alike.
    `on_idle` runs once every child is set up and idle."""
    children = [Child(args, name) for name in PIPELINES]
    try:
        for child in children:
            child.ask(None)  # "ready"
        on_idle()
        for child in children:
            child.ask(f"warmup {args.warmup}")
        for r, start in enumerate(range(0, args.steps, args.chunk)):
            n = min(args.chunk, args.steps - start)
            for i in range(len(children)):
                children[(r + i) % len(children)].ask(f"steps {n}")
        return [json.loads(child.ask("report")) for child in children]
    finally:
        for child in children:
            child.close()


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def print_tables(report: dict[str, Any]) -> str:
    m, f = report["machine"], report["flops"]
    lines = [
        f"{report['config']}  |  {m['cpu_model']}  |  device {report['device']}  |  "
        f"torch {m['torch']}  |  {m['threads']} threads  |  {report['date']}",
        f"load average {m['loadavg_start']} -> {m['loadavg_end']}; other processes used "
        + ", ".join(f"{p['other_processes_cores']:.2f}" for p in report["pipelines"])
        + " cores during each timed loop",
        *(
            [
                f"NOTE: other processes used over {SHARED_CORES} cores during a timed loop; "
                "forward/backward/optimiser times (identical work in every pipeline) then vary "
                "with the load, so compare the data column, not samples/s."
            ]
            if any(p["other_processes_cores"] > SHARED_CORES for p in report["pipelines"])
            else []
        ),
        "",
        "| pipeline | samples/s | step ms (p50) | data ms | fwd ms | bwd ms | opt ms "
        "| parts/step | data <= 5% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in report["pipelines"]:
        ph = p["phase_ms"]
        verdict = "PASS" if p["data_fraction"] <= DATA_TARGET else "FAIL"
        target = "" if p["pipeline"] == TARGET_PIPELINE else " (not the target)"
        lines.append(
            f"| {p['pipeline']} | {p['samples_per_s']:.0f} "
            f"| {p['step_ms']:.2f} ({p['step_ms_p50']:.2f}) "
            f"| {ph['data']:.3f} ({100 * p['data_fraction']:.1f}%) | {ph['forward']:.2f} "
            f"| {ph['backward']:.2f} | {ph['optimiser']:.2f} "
            f"| {100 * p['phase_sum_ms'] / p['step_ms']:.1f}% | {verdict}{target} |"
        )
    peak = report["matmul"]["flop_per_s"]
    lines += [
        "",
        f"FLOPs per training step (batch {f['batch']}, forward + backward): "
        f"{f['per_step'] / 1e6:.1f} MFLOP; machine fp32 matmul "
        f"{report['matmul']['size']}x{report['matmul']['size']}: {peak / 1e9:.1f} GFLOP/s",
        "",
        "| pipeline | model GFLOP/s | % of matmul peak | peak RSS | RSS growth in loop "
        "| data memory | setup s |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for p in report["pipelines"]:
        memory = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in p["memory_bytes"].items())
        g = p["pipeline_rss_growth_mib"]
        growth = "-" if g is None else f"{g:.1f} MiB"
        lines.append(
            f"| {p['pipeline']} | {p['model_flop_per_s'] / 1e9:.2f} "
            f"| {100 * p['fraction_of_peak']:.2f}% | {p['peak_rss_mib']:.0f} MiB "
            f"| {growth} | {memory} | {p['setup_s']:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pipeline is not None:
        serve_pipeline(args)
        return
    device = torch.device(args.device)
    load_start = os.getloadavg()
    s = load_setup(args.config, torch.device("cpu"))
    flops = count_step_flops(s)
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    matmuls = []
    pipelines = run_pipelines(args, lambda: matmuls.append(matmul_flops(device, size)))
    matmuls.append(matmul_flops(device, size))
    matmul = max(matmuls, key=lambda m: m["flop_per_s"])
    matmul["runs_flop_per_s"] = [m["flop_per_s"] for m in matmuls]
    for p in pipelines:
        p["model_flop_per_s"] = flops["per_sample"] * p["samples_per_s"]
        p["fraction_of_peak"] = p["model_flop_per_s"] / matmul["flop_per_s"]
    spec, data = s.run.spec, s.data
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": str(args.config),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "machine": {
            "cpu_model": cpu_model(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "run": {
            "model": spec.model.model_dump(mode="json", by_alias=True),
            "data": spec.data.model_dump(mode="json", by_alias=True),
            "batch_size": spec.training.batch_size,
            "optimizer": spec.training.optimizer.model_dump(mode="json", by_alias=True),
            "grad_clip": spec.training.grad_clip,
            "seed": spec.seed,
            "train_samples": len(data.train),
            "features": data.num_features,
            "parameters": sum(p.numel() for p in s.model.parameters()),
        },
        "flops": flops,
        "matmul": matmul,
        "data_target_fraction": DATA_TARGET,
        "pipelines": pipelines,
    }
    report["table"] = print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
