"""RL environment throughput: TradingEnvironment and BatchedTradingEnv against gym-anytrading.

One run, at a quickstart-like environment (stocks AAPL+MSFT daily bars, lookbackWindow 30,
continuous actions, differential_sharpe reward, default costs, random starts):

- env-steps/s of the single `TradingEnvironment` and of `BatchedTradingEnv` at N = 1, 64,
  1024 (random actions generated up front; autoreset included; infos="episode_end", the
  default, and once at N = 1024 with infos="full": portfolio numbers in every info), and of
  the peer, gym-anytrading's `stocks-v0` on its own data (raw, and as `gymnasium.make` wraps
  it; its observation is a view of its feature array, ours an array never written again);
- PPO end-to-end (SB3 PPO MlpPolicy, the quickstart's n_steps 256 / batch_size 64, 8 envs):
  timesteps/s with `BatchedTradingEnv` against `DummyVecEnv` of 8 TradingEnvironments, and
  the rollout-collection share of it;
- the observation size in bytes, and a memory-bandwidth reference: np.copyto of 256 MiB
  (DRAM) and of one batched step's observations (cache-sized), in GB/s, against the
  batched env's observation bytes written per second (bytes per observation x env-steps/s).

The candidates run in turns (--rounds rounds of --chunk seconds each, the order rotating), so
a change in the machine's load hits all of them; the table shows the median round (and the
best), in wall-clock and in this process's CPU time, and the cores other processes used
meanwhile (/proc/stat): on a shared box, read the CPU-time rate. Targets are reported, not
asserted.

    .venv/bin/python bench/env_throughput.py [--rounds 7] [--chunk 0.3] [--ppo-steps 4096]
        [--ppo-runs 3] [--threads 1] [--out bench/results/env_throughput.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tradewind.api.rl import EnvironmentSpec
from tradewind.trainer.rl import BatchedTradingEnv, Market, TradingEnvironment, load_market
from tradewind.trainer.rl.vec_env import InfoMode

BATCH_SIZES = (1, 64, 1024)
ENV = {
    "data": {"source": "stocks", "symbols": ["AAPL", "MSFT"]},
    "lookbackWindow": 30,
    "actionSpace": "continuous",
    "reward": "differential_sharpe",
}
FULL_INFOS = "BatchedTradingEnv N=1024 (infos='full')"
PEER_OBSERVATION_BYTES = 30 * 2 * 4
"""stocks-v0: Box(window_size 30, 2 signal features), float32."""
DRAM_COPY_BYTES = 256 * 2**20
Runner = Callable[[float], tuple[int, float, float, float]]
"""run for about `seconds`: (env-steps, wall seconds, CPU seconds, other processes' cores)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7, help="turns of every candidate")
    p.add_argument("--chunk", type=float, default=0.3, help="seconds per turn")
    p.add_argument("--ppo-steps", type=int, default=4096, help="PPO timesteps per run")
    p.add_argument("--ppo-runs", type=int, default=3, help="PPO runs per vec env (alternating)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for PPO")
    p.add_argument("--out", type=Path, default=Path("bench/results/env_throughput.json"))
    return p.parse_args(argv)


def _machine_busy_seconds() -> float:
    """CPU-seconds every process of the machine has used (/proc/stat, idle excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _timed(run: Callable[[], int]) -> tuple[int, float, float, float]:
    """(steps, wall s, this process's CPU s, cores other processes used meanwhile)."""
    busy, wall, cpu = _machine_busy_seconds(), time.perf_counter(), time.process_time()
    steps = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    others = max(0.0, _machine_busy_seconds() - busy - cpu) / wall
    return steps, wall, cpu, others


def _step_loop(env: Any, actions: list[Any], seconds: float) -> tuple[int, float, float, float]:
    """Step a gymnasium env through `actions` (repeated) for about `seconds`."""

    def run() -> int:
        steps, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for action in actions:
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()
            steps += len(actions)
        return steps

    return _timed(run)


def single_runner(market: Market, spec: EnvironmentSpec, seed: int) -> Runner:
    env = TradingEnvironment(market, spec, seed=seed)
    env.reset()
    actions = list(np.random.default_rng(seed).uniform(-1, 1, (2000, 2)).astype(np.float32))
    return lambda seconds: _step_loop(env, actions, seconds)


def peer_runner(wrapped: bool, seed: int) -> Runner:
    import gym_anytrading  # type: ignore[import-untyped]  # noqa: F401  (registers stocks-v0)
    import gymnasium

    env = gymnasium.make("stocks-v0")
    env = env if wrapped else env.unwrapped
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 2, 2000).tolist()
    return lambda seconds: _step_loop(env, actions, seconds)


def batched_runner(
    market: Market, spec: EnvironmentSpec, n_envs: int, seed: int, infos: InfoMode = "episode_end"
) -> Runner:
    env = BatchedTradingEnv(market, spec, n_envs, seed=seed, infos=infos)
    env.reset()
    steps_per_pass = max(10, 4000 // n_envs)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps_per_pass, n_envs, 2))
    actions = actions.astype(np.float32)

    def run(seconds: float) -> tuple[int, float, float, float]:
        def loop() -> int:
            steps, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for batch in actions:
                    env.step_async(batch)
                    env.step_wait()
                steps += steps_per_pass * n_envs
            return steps

        return _timed(loop)

    return run


def measure(runners: dict[str, Runner], rounds: int, chunk: float) -> dict[str, Any]:
    """Every runner in turns (rotating order) after a warm-up turn: rates per round."""
    for runner in runners.values():
        runner(min(chunk, 0.1))
    names = list(runners)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            steps, wall, cpu, others = runners[name](chunk)
            samples[name].append((steps / wall, steps / max(cpu, 1e-9), others))
    return {
        name: {
            "steps_per_s_median": statistics.median(s[0] for s in rates),
            "steps_per_s_best": max(s[0] for s in rates),
            "cpu_steps_per_s_median": statistics.median(s[1] for s in rates),
            "other_cores_median": statistics.median(s[2] for s in rates),
            "rounds": [{"wall": w, "cpu": c, "other_cores": o} for w, c, o in rates],
        }
        for name, rates in samples.items()
    }


def copy_bandwidth(n_bytes: int, min_seconds: float = 0.5) -> float:
    """Bytes copied per second by np.copyto (best of repeated copies of `n_bytes`)."""
    source = np.random.default_rng(0).random(n_bytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        np.copyto(target, source)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return source.nbytes / best


class _RolloutTimer:
    """An SB3 callback that adds up the time spent collecting rollouts."""

    def __new__(cls) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        class Timer(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds, self._start = 0.0, 0.0

            def _on_rollout_start(self) -> None:
                self._start = time.perf_counter()

            def _on_rollout_end(self) -> None:
                self.seconds += time.perf_counter() - self._start

            def _on_step(self) -> bool:
                return True

        return Timer()


def ppo_run(make_env: Callable[[], Any], timesteps: int, seed: int) -> dict[str, float]:
    from stable_baselines3 import PPO

    env = make_env()
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, seed=seed, device="cpu")
    timer = _RolloutTimer()
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=timer)
    wall = time.perf_counter() - start
    return {
        "timesteps": model.num_timesteps,
        "seconds": wall,
        "fps": model.num_timesteps / wall,
        "rollout_seconds": timer.seconds,
        "rollout_fps": model.num_timesteps / timer.seconds,
    }


def ppo_comparison(
    market: Market, spec: EnvironmentSpec, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(args.threads)

    def single(i: int) -> Callable[[], TradingEnvironment]:
        return lambda: TradingEnvironment(market, spec, seed=i)

    makers: dict[str, Callable[[], Any]] = {
        "BatchedTradingEnv": lambda: BatchedTradingEnv(market, spec, 8, seed=0),
        "DummyVecEnv(8 x TradingEnvironment)": lambda: DummyVecEnv([single(i) for i in range(8)]),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    for maker in makers.values():  # untimed: torch's first-call set-up, SB3's imports
        ppo_run(maker, 512, seed=0)
    for r in range(args.ppo_runs):
        for name in list(makers)[r % 2 :] + list(makers)[: r % 2]:
            runs[name].append(ppo_run(makers[name], args.ppo_steps, seed=0))
    return {
        name: {
            "fps_median": statistics.median(run["fps"] for run in results),
            "rollout_fps_median": statistics.median(run["rollout_fps"] for run in results),
            "rollout_share": statistics.median(
                run["rollout_seconds"] / run["seconds"] for run in results
            ),
            "runs": results,
        }
        for name, results in runs.items()
    }


def machine() -> dict[str, Any]:
    import gymnasium
    import stable_baselines3
    import torch

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": torch.__version__,
    }


def table(results: dict[str, Any]) -> str:
    obs = results["observation_bytes"]
    lines = [
        "| environment | env-steps/s (median) | best | CPU-time rate | other cores | obs bytes "
        "| obs GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rates in results["throughput"].items():
        size = obs["peer"] if name.startswith("gym-anytrading") else obs["ours"]
        rate = rates["steps_per_s_median"]
        lines.append(
            f"| {name} | {rate:,.0f} | {rates['steps_per_s_best']:,.0f} | "
            f"{rates['cpu_steps_per_s_median']:,.0f} | {rates['other_cores_median']:.2f} | "
            f"{size} | {rate * size / 1e9:.2f} |"
        )
    bandwidth = results["bandwidth"]
    lines += [
        "",
        f"np.copyto bandwidth: {bandwidth['dram_gb_s']:.1f} GB/s (256 MiB, DRAM), "
        f"{bandwidth['obs_sized_gb_s']:.1f} GB/s ({bandwidth['obs_sized_bytes'] / 2**20:.1f} MiB, "
        f"one N=1024 step of observations)",
    ]
    for name, use in bandwidth["batched"].items():
        lines.append(
            f"{name} writes {use['obs_gb_s']:.2f} GB/s of observations: DRAM copy / that = "
            f"{use['dram_over']:.2f}x, same-size copy / that = {use['obs_sized_over']:.2f}x"
        )
    lines += [
        "",
        "| PPO (8 envs, n_steps 256, batch 64) | timesteps/s | rollout timesteps/s | rollout "
        "share |",
        "|---|---:|---:|---:|",
    ]
    for name, ppo in results["ppo"].items():
        lines.append(
            f"| {name} | {ppo['fps_median']:,.0f} | {ppo['rollout_fps_median']:,.0f} | "
            f"{ppo['rollout_share']:.0%} |"
        )
    lines += ["", *(f"{target}: {verdict}" for target, verdict in results["targets"].items())]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> dict[str, str]:
    """PASS/FAIL on the wall-clock medians; the CPU-time rates (what the candidate gets from a
    core of its own, closer to an idle machine's figure) in brackets beside them."""
    throughput = results["throughput"]
    rates = {k: v["steps_per_s_median"] for k, v in throughput.items()}
    cpu = {k: v["cpu_steps_per_s_median"] for k, v in throughput.items()}
    ours, peer = "TradingEnvironment", "gym-anytrading stocks-v0 (raw)"
    verdicts = {
        "single env >= gym-anytrading (raw)": f"{'PASS' if rates[ours] >= rates[peer] else 'FAIL'} "
        f"({rates[ours] / rates[peer]:.2f}x; CPU-time {cpu[ours] / cpu[peer]:.2f}x)"
    }
    for name, use in results["bandwidth"]["batched"].items():
        rate, ratio = rates[name], use["dram_over"]
        verdicts[f"{name} >= 1M env-steps/s"] = (
            f"{'PASS' if rate >= 1e6 else 'FAIL'} ({rate / 1e6:.2f}M; CPU-time "
            f"{cpu[name] / 1e6:.2f}M)"
        )
        verdicts[f"{name} within 2x of DRAM copy bandwidth"] = (
            f"{'PASS' if ratio <= 2 else 'FAIL'} ({ratio:.2f}x; CPU-time "
            f"{use['dram_over_cpu']:.2f}x)"
        )
    return verdicts


def bandwidth_use(throughput: dict[str, Any], observation_bytes: int) -> dict[str, Any]:
    """The reference copy rates and the observation bytes the N=1024 envs write per second."""
    dram = copy_bandwidth(DRAM_COPY_BYTES)
    same_size = copy_bandwidth(1024 * observation_bytes)
    batched = {}
    for name in ("BatchedTradingEnv N=1024", FULL_INFOS):
        rate = throughput[name]["steps_per_s_median"] * observation_bytes
        cpu_rate = throughput[name]["cpu_steps_per_s_median"] * observation_bytes
        batched[name] = {
            "obs_gb_s": rate / 1e9,
            "dram_over": dram / rate,
            "dram_over_cpu": dram / cpu_rate,
            "obs_sized_over": same_size / rate,
        }
    return {
        "dram_gb_s": dram / 1e9,
        "obs_sized_bytes": 1024 * observation_bytes,
        "obs_sized_gb_s": same_size / 1e9,
        "batched": batched,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    spec = EnvironmentSpec.model_validate(ENV)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        market = load_market(spec, seed=0, cache_dir=Path(cache)).train
    runners: dict[str, Runner] = {
        "TradingEnvironment": single_runner(market, spec, 0),
        "gym-anytrading stocks-v0 (raw)": peer_runner(wrapped=False, seed=0),
        "gym-anytrading stocks-v0 (gymnasium.make)": peer_runner(wrapped=True, seed=0),
        **{
            f"BatchedTradingEnv N={n}": batched_runner(market, spec, n, seed=0) for n in BATCH_SIZES
        },
        FULL_INFOS: batched_runner(market, spec, 1024, seed=0, infos="full"),
    }
    throughput = measure(runners, args.rounds, args.chunk)
    observation_bytes = int(TradingEnvironment(market, spec).reset()[0].nbytes)
    peer_bytes = PEER_OBSERVATION_BYTES
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "environment": ENV,
        "market": {"bars": market.num_bars, "symbols": market.symbols},
        "observation_bytes": {"ours": observation_bytes, "peer": peer_bytes},
        "throughput": throughput,
        "bandwidth": bandwidth_use(throughput, observation_bytes),
        "ppo": ppo_comparison(market, spec, args),
        "run": {"rounds": args.rounds, "chunk_s": args.chunk, "ppo_steps": args.ppo_steps},
    }
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    results["targets"] = targets(results)
    results["table"] = table(results)
    print(
        f"{results['machine']['cpu']} | {results['date']} | load {load_before} -> "
        f"{results['load_average']['after']}"
    )
    print(results["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
