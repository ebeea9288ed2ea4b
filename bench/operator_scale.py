"""Operator scale: N TrainingRuns of 2 nodes each, from apply to Running, on a fresh dev stack.

For each size N, in its own temporary folder:

1. `tradewind dev up --no-mlflow` with enough kwok GPU nodes (64 GPUs, 64 pods of this shape
   per node, 25% headroom); the CRDs applied server-side; namespace `bench`.
2. `tradewind operator` (clusterwide) as a subprocess; ready once a warm-up run (namespace
   `bench-warmup`) is Running, so operator start-up is not measured.
3. Watches (list, then watch from that resourceVersion; no polling) on TrainingRuns, Jobs and
   pods in `bench`, then N TrainingRuns POSTed from a thread pool as fast as it goes. Each
   run: 2 nodes x 1 GPU, pods labelled `tradewind.dev/fake-hold: "true"` so kwok keeps them
   Running.
4. Timings on the harness's monotonic clock, per run: created (POST returned) -> Job ADDED
   (operator) -> both pods ADDED (Job controller) -> both bound (scheduler) -> both Running
   (kwok) -> status.phase Running arrives (operator). Also the server's own view:
   creationTimestamp -> the Running condition's lastTransitionTime (1 s resolution).
5. CPU seconds (utime+stime from /proc/<pid>/stat) of the operator, kube-apiserver,
   kube-controller-manager, kube-scheduler, kwok, etcd and this harness over the burst (first
   POST to all Running) and over a steady window after it (all runs Running, nothing to do
   but the operator's periodic reconciles); peak RSS (VmHWM); apiserver requests by verb and
   resource (from its /metrics), so the load each part puts on the apiserver shows.
6. The operator is stopped and `tradewind dev down --purge` run whatever happened.

Each size runs in each of --modes, each on a fresh stack, the order rotating from one size
(and round) to the next:

- `tradewind`: the above.
- `kubeflow`: Kubeflow's training operator (v1.9.4, `hack/build-binaries.sh
  training-operator`), out of cluster, PyTorchJob only, on the same stack and kwok nodes: N
  PyTorchJobs of Master + Worker with the same two pods (1 GPU, 500m, 2Gi each, held Running
  by kwok). It creates the pods itself (no Job) and one headless Service per replica; a job
  counts as Running at its Running condition. Its client limits are raised (KF_CLIENT: 1000
  QPS, burst 2000, 32 worker threads; its defaults are 20 / 30 / 1), Tradewind's client has no
  rate limit and reconciles 32 runs at a time.
- `control plane only` (the baseline): no operator; the harness POSTs each TrainingRun and
  right after it the ConfigMap, Service and Job the operator would create for it (rendered by
  tradewind.operator.builders, owned by the run), and a run counts as Running when both its
  pods are. The difference from `tradewind` is what the operator adds: its CPU, its requests
  (status writes, Events, reads) and its reaction time.
- `control plane only, pods` (not in the default modes): as the baseline, but the harness
  POSTs the Job's two pods itself, as the Job controller would render them (no Job): the
  floor of an operator that made pods directly, as Kubeflow's does, with a free operator.

--mlflow (tradewind): the stack runs MLflow and the operator reads the runs' progress from it.
Once all runs are Running, the harness logs to MLflow what each run's trainer would have (an
MLflow run tagged with its name, namespace and uid; its spec as ~90 params; a few metrics)
and waits until every run's status shows it; then nothing more is logged, so the steady window
measures what the operator's progress reads cost (the operator, MLflow, and its reconciles
from /metrics) when they find nothing new.

--takeover (tradewind): a standby replica runs beside the leader; once all runs are Running,
the leader is killed, every run's status set back to Pending, and the time until the standby
has written them all Running again is recorded. --at-10k: then 10,000 TrainingRuns, Tradewind
only: all Running, none lost, none with two Jobs, RSS and CPU.

kwok's stages are the dev stack's (tradewind/devstack/kwok.py STAGES): a bound pod is Running
after 0.1-0.3 s and Ready 0.2-0.3 s later, a container start's worth, so the measurement is
not kwok's sleep. The load average and the CPU of processes outside the stack and operator
(`other processes`) are recorded per size: the machine may be shared.

With --profile-operator the operator runs inside this script (`_operator` mode), the same
code with (a) exact meters on its functions (calls, thread CPU, wall; reconcile, parse_run,
build_configmap, each Kube call, kopf's event processing), how long reconciles waited for a
thread of asyncio.to_thread's executor and the event loop's lag, and (b) a sampling profiler
that charges each thread's CPU (pthread CPU clocks) to its Python stack. That costs the
operator some speed, so its numbers go in their own file; --attach-profile FILE puts such a
file's findings into the recorded JSON under `profiled_runs`. With --profile-apiserver SECONDS
the stack serves Go's pprof and the apiserver's CPU profile over the burst's first SECONDS is
summarised under `apiserver_profile` (the .pprof goes to --keep-logs).

    .venv/bin/python bench/operator_scale.py [--sizes 100 500 1000] [--modes ...] [--rounds 1]
        [--takeover] [--at-10k]
        [--out bench/results/operator_scale.json] [--timeout 420] [--steady-seconds 15]
        [--profile-operator] [--attach-profile FILE...] [--keep-logs DIR]
        [--profile-apiserver SECONDS]

Targets (reported, not asserted), at 1000 runs: Tradewind's all-Running time at most 1.25x the
control plane's alone and no more than Kubeflow's; operator RSS under 250 MB. At 10,000: all
Running, RSS under 600 MB.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import copy
import datetime as dt
import functools
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NAMESPACE = "bench"
WARMUP_NAMESPACE = "bench-warmup"
GROUP, VERSION, PLURAL = "tradewind.dev", "v1alpha1", "trainingruns"
RUN_LABEL = "tradewind.dev/run"
HOLD_LABEL = "tradewind.dev/fake-hold"
GPU_POOL_LABEL = "tradewind.dev/gpu-pool"
NODES_PER_RUN = 2
GPUS_PER_NODE = 64
PODS_PER_NODE = 64
"""Pods of this shape one kwok node takes: 64 GPUs; 32 CPUs / 500m; 256Gi / 2Gi; 110 pods."""
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")
TARGET_RUNS = 1000
TARGET_BASELINE_RATIO = 1.25
"""Tradewind's all-Running time at most this many times the control plane's alone."""
TARGET_PEER_RATIO = 1.0
"""Kubeflow's all-Running time over Tradewind's: at least this."""
TARGET_RSS_MB = 250.0
TARGET_10K_RSS_MB = 600.0
STAGES = (
    ("operator: create -> Job", "created", "job"),
    ("job controller: Job -> pods", "job", "pods_created"),
    ("scheduler: pods -> bound", "pods_created", "pods_bound"),
    ("kwok: bound -> pods Running", "pods_bound", "pods_running"),
    ("operator: pods Running -> status", "pods_running", "running"),
)
OPERATOR_DETAIL = (
    ("watch: create -> first event at the harness", "created", "seen"),
    ("operator: first event at the harness -> Job", "seen", "job"),
    ("operator: create -> first status", "created", "first_status"),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
BASELINE = "control plane only"
TRADEWIND = "tradewind"
KUBEFLOW = "kubeflow"
POD_BASELINE = "control plane only, pods"
MODES = (TRADEWIND, KUBEFLOW, BASELINE)
"""The default modes: issue 17's table."""
ALL_MODES = (*MODES, POD_BASELINE)
BASELINES = (BASELINE, POD_BASELINE)
"""The modes with no operator: the harness POSTs the run's children itself."""
KF_GROUP, KF_VERSION, KF_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
KF_NAMESPACE = "kubeflow"
KF_CLIENT = {"kube-api-qps": 1000, "kube-api-burst": 2000, "controller-threads": 32}
"""Kubeflow's client: its defaults (20 QPS, burst 30, one worker thread) would make it the
limit; Tradewind's client has no rate limit and reconciles 32 runs at a time."""
BENCH_IMAGE = "tradewind-trainer:bench"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads, dead ones included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat), so what the
    stack and the operator did not use shows as `other processes`: on a shared box, other
    people's load."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float | None:
    """cpu_seconds of a process and of its live descendants (`mlflow server` runs its server
    in a child)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    try:
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        children = []
    return own + sum(tree_cpu_seconds(child) or 0.0 for child in children)


def proc_status_mb(pid: int, key: str) -> float | None:
    """VmRSS / VmHWM of a process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def thread_cpu_split(pid: int) -> dict[str, float]:
    """CPU of the main thread (the operator's asyncio loop: kopf) and of every other live
    thread (executor workers: reconciles, sync handlers), in seconds."""
    main = cpu_seconds(pid) or 0.0
    out = {"main": 0.0, "others": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        secs = (int(fields[11]) + int(fields[12])) / CLK_TCK
        out["main" if int(tid) == pid else "others"] += secs
    out["exited_threads"] = max(0.0, main - out["main"] - out["others"])
    return out


class Sampler(threading.Thread):
    """CPU seconds and RSS of every watched process, every `interval` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.peak_rss: dict[str, float] = collections.defaultdict(float)
        self._stop = threading.Event()

    def snapshot(self) -> dict[str, float]:
        out = {
            name: (tree_cpu_seconds if name == "mlflow" else cpu_seconds)(pid) or 0.0
            for name, pid in self.pids.items()
        }
        busy = machine_busy_seconds()
        out["other processes"] = busy - sum(out.values())
        return out

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic(), self.snapshot()))
            for name, pid in self.pids.items():
                rss = proc_status_mb(pid, "VmRSS") or 0.0
                self.peak_rss[name] = max(self.peak_rss[name], rss)

    def stop(self) -> None:
        self._stop.set()

    def timeline(self, start: float, end: float) -> list[dict[str, Any]]:
        """Per-second CPU use (percent of one core) of each process between start and end."""
        rows = [(t, s) for t, s in self.samples if start - 1.0 <= t <= end + 1.0]
        out: list[dict[str, Any]] = []
        for (t0, a), (t1, b) in itertools.pairwise(rows):
            if t1 - t0 <= 0:
                continue
            pct = {k: round(100 * (b[k] - a[k]) / (t1 - t0)) for k in b if k in a}
            out.append({"t": round(t1 - start, 1), **pct})
        # one row per second is enough for the JSON
        by_second: dict[int, dict[str, Any]] = {}
        for row in out:
            by_second.setdefault(math.floor(row["t"]), row)
        return list(by_second.values())


# --- the apiserver, over HTTPS with the stack's admin certificate ---------------------------


class Api:
    """Just enough of the Kubernetes REST API: POST, GET, list+watch, /metrics."""

    def __init__(self, kubeconfig: Path, pool_size: int = 32) -> None:
        import urllib3

        config = json.loads(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.host = cluster["server"]
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=cluster["certificate-authority"],
            cert_file=user["client-certificate"],
            key_file=user["client-key"],
            retries=False,
        )

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        return self.pool.request(method, self.host + path, body=data, headers=headers, **kw)

    def get_json(self, path: str, timeout: float = 30) -> Any:
        resp = self.request("GET", path, timeout=timeout)
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {resp.data[:300]!r}")
        return json.loads(resp.data)

    def metrics(self) -> dict[str, float]:
        """apiserver_request_total summed by VERB group/resource[/subresource]."""
        resp = self.pool.request("GET", self.host + "/metrics", timeout=30)
        out: dict[str, float] = collections.defaultdict(float)
        for line in resp.data.decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            labels = dict(
                part.split("=", 1) for part in labels_text.replace('"', "").split(",") if part
            )
            what = labels.get("resource", "")
            if labels.get("group"):
                what = f"{labels['group']}/{what}"
            if labels.get("subresource"):
                what += "/" + labels["subresource"]
            out[f"{labels.get('verb', '?')} {what}"] += float(value)
        return dict(out)


class Watch(threading.Thread):
    """List, then watch from the list's resourceVersion, calling `on_event(type, obj, t)` with
    the arrival time; reconnects from the last resourceVersion (re-lists after 410 Gone)."""

    def __init__(self, api: Api, path: str, on_event: Callable[[str, Any, float], None]) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.on_event = api, path, on_event
        self.rv = self._list()
        self.stopped = threading.Event()
        self.errors: list[str] = []
        self.connects = 0

    def _list(self) -> str:
        """Every object, in pages: at 10,000 runs one LIST of all Jobs outlasted the request
        timeout on the loaded apiserver, and the watch, relisting after each 410, froze."""
        items, version = list_all(self.api, self.path)
        now = time.monotonic()
        for item in items:
            self.on_event("ADDED", item, now)
        return version

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._watch_once()
            except Exception as exc:  # reconnect; a benchmark should not die on a dropped watch
                self.errors.append(repr(exc)[:300])
                time.sleep(0.2)

    def _watch_once(self) -> None:
        query = f"?watch=1&allowWatchBookmarks=true&timeoutSeconds=60&resourceVersion={self.rv}"
        resp = self.api.request("GET", self.path + query, preload_content=False, timeout=None)
        self.connects += 1
        try:
            if resp.status != 200:
                raise RuntimeError(f"watch {self.path}: {resp.status}")
            buffer = b""
            for chunk in resp.stream(1 << 16):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._handle(json.loads(line), time.monotonic())
                if self.stopped.is_set():
                    return
        finally:
            resp.release_conn()

    def _handle(self, event: dict[str, Any], now: float) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:  # too old: start over from a fresh list
                self.rv = self._list()
            return
        self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
        if kind != "BOOKMARK":
            self.on_event(str(kind), obj, now)


# --- what the watches see -------------------------------------------------------------------


class Tracker:
    """Per run: when each stage was first seen, on the harness's monotonic clock."""

    def __init__(
        self, expected: int, running_from_pods: bool = False, pods_are_children: bool = False
    ) -> None:
        self.expected = expected
        self.running_from_pods = running_from_pods
        self.pods_are_children = pods_are_children  # Kubeflow: no Job, its first pod instead
        self.lock = threading.Lock()
        self.t: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.pods: dict[str, dict[str, dict[str, float]]] = collections.defaultdict(dict)
        self.server_latency: dict[str, float] = {}
        self.all_running = threading.Event()
        self.all_jobs = threading.Event()
        self.running = 0
        self.jobs = 0
        self.job_names: dict[str, set[str]] = collections.defaultdict(set)

    def created(self, name: str, t: float) -> None:
        with self.lock:
            self.t[name].setdefault("created", t)

    def on_run(self, kind: str, obj: dict[str, Any], t: float) -> None:
        if kind == "DELETED":
            return
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        with self.lock:
            times = self.t[name]
            times.setdefault("seen", t)
            if status.get("phase") or status.get("conditions"):
                times.setdefault("first_status", t)
            if _is_running(obj) and "running" not in times:
                times["running"] = t
                self.running += 1
                self.server_latency[name] = _server_latency(obj)
                if self.running >= self.expected:
                    self.all_running.set()

    def on_job(self, kind: str, obj: dict[str, Any], t: float) -> None:
        run = (obj["metadata"].get("labels") or {}).get(RUN_LABEL)
        if run is None or kind == "DELETED":
            return
        with self.lock:
            self.job_names[run].add(obj["metadata"]["name"])
            if "job" not in self.t[run]:
                self.t[run]["job"] = t
                self.jobs += 1
                if self.jobs >= self.expected:
                    self.all_jobs.set()

    def on_pod(self, kind: str, obj: dict[str, Any], t: float) -> None:
        run = (obj["metadata"].get("labels") or {}).get(RUN_LABEL)
        if run is None or kind == "DELETED":
            return
        with self.lock:
            pod = self.pods[run].setdefault(obj["metadata"]["name"], {})
            pod.setdefault("created", t)
            if self.pods_are_children and "job" not in self.t[run]:
                self.t[run]["job"] = t
                self.jobs += 1
            if (obj.get("spec") or {}).get("nodeName"):
                pod.setdefault("bound", t)
            if (obj.get("status") or {}).get("phase") == "Running":
                pod.setdefault("running", t)
            pods, times = self.pods[run], self.t[run]
            if len(pods) >= NODES_PER_RUN:
                for stage, key in (
                    ("pods_created", "created"),
                    ("pods_bound", "bound"),
                    ("pods_running", "running"),
                ):
                    if stage not in times and all(key in p for p in pods.values()):
                        times[stage] = max(p[key] for p in pods.values())
                if self.running_from_pods and "pods_running" in times and "running" not in times:
                    times["running"] = times["pods_running"]
                    self.running += 1
                    if self.running >= self.expected:
                        self.all_running.set()


def _is_running(obj: dict[str, Any]) -> bool:
    """A TrainingRun's phase; a PyTorchJob's Running condition (it has no phase)."""
    status = obj.get("status") or {}
    if "phase" in status:
        return bool(status["phase"] == "Running")
    return any(
        c.get("type") == "Running" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _server_latency(obj: dict[str, Any]) -> float:
    """creationTimestamp (1 s resolution) -> lastTransitionTime of the Running condition."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Running" and cond.get("status") == "True":
            return _parse_time(cond["lastTransitionTime"]) - _parse_time(
                obj["metadata"]["creationTimestamp"]
            )
    return float("nan")


def percentiles(values: list[float]) -> dict[str, float | None]:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def rank(q: float) -> float:  # nearest rank
        return round(values[max(0, math.ceil(q * len(values)) - 1)], 3)

    return {
        "n": len(values),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(values[-1], 3),
    }


# --- the stack and the operator -------------------------------------------------------------


def tradewind(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradewind.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Stack:
    """One `tradewind dev up` stack in its own folder (MLflow only if asked for)."""

    def __init__(
        self, directory: Path, nodes: int, profiling: bool = False, mlflow: bool = False
    ) -> None:
        self.dir, self.nodes, self.profiling, self.mlflow = directory, nodes, profiling, mlflow
        self.kubeconfig = directory / "kubeconfig"
        self.kubectl_bin = str(_bin_dir() / "kubectl")

    def up(self) -> None:
        result = tradewind(
            "dev", "up", "--dir", str(self.dir), "--nodes", str(self.nodes),
            "--gpus-per-node", str(GPUS_PER_NODE),
            *([] if self.mlflow else ["--no-mlflow"]),
            *(["--profiling"] if self.profiling else []),
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"tradewind dev up failed:\n{result.stdout}\n{result.stderr}")

    def down(self) -> None:
        result = tradewind("dev", "down", "--purge", "--dir", str(self.dir), timeout=180)
        if result.returncode != 0:
            log(f"tradewind dev down failed: {result.stderr.strip()[-500:]}")

    @property
    def pids(self) -> dict[str, int]:
        state = json.loads((self.dir / "state.json").read_text())
        names = (*COMPONENTS, "mlflow") if self.mlflow else COMPONENTS
        return {name: int(state["pids"][name]) for name in names}

    def env(self) -> dict[str, str]:
        out = {}
        for line in tradewind("dev", "env", "--dir", str(self.dir)).stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, value = line[len("export ") :].split("=", 1)
                out[key] = value
        return out

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 180) -> str:
        result = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


def _bin_dir() -> Path:
    from tradewind.devstack.stack import cache_dir

    return cache_dir() / "bin" / "current"


class Operator:
    """`tradewind operator` (clusterwide) as a subprocess, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        profile: Path | None,
        metrics_port: int | None = None,
    ) -> None:
        self.env = {
            **os.environ,
            **env,
            "TRADEWIND_TRAINER_IMAGE": BENCH_IMAGE,
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("TRADEWIND_MLFLOW_TRACKING_URI", None)
        if "MLFLOW_TRACKING_URI" in env:  # the stack runs MLflow (--mlflow): progress is read
            self.env["TRADEWIND_MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
        self.env.pop("TRADEWIND_NAMESPACES", None)
        self.log_path, self.profile, self.metrics_port = log_path, profile, metrics_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.profile is not None:
            argv = [sys.executable, str(Path(__file__).resolve()), "_operator", str(self.profile)]
        else:
            argv = [sys.executable, "-m", "tradewind.cli", "operator"]
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reconciles(self) -> float | None:
        """Reconciles so far, from the operator's /metrics (with a metrics port)."""
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        name = "tradewind_reconcile_duration_seconds_count"
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_summary(self) -> dict[str, Any]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        errors = [ln for ln in lines if "ERROR" in ln or "Traceback" in ln]
        return {
            "lines": len(lines),
            "bytes": self.log_path.stat().st_size,
            "error_lines": len(errors),
            "reconcile_failures": sum("reconcile of" in ln and "failed" in ln for ln in lines),
            "first_errors": [ln[:300] for ln in errors[:5]],
        }


class KubeflowOperator(Operator):
    """Kubeflow's training operator (`hack/build-binaries.sh training-operator`), out of
    cluster: PyTorchJob only, webhooks unregistered (its cert rotator still wants its Secret
    and serving certificates to start), its client limits raised (KF_CLIENT)."""

    def __init__(self, stack: Stack, workdir: Path, log_path: Path) -> None:
        super().__init__({}, log_path, None)
        self.stack, self.workdir = stack, workdir
        self.binary = _bin_dir() / "training-operator"
        if not self.binary.is_file():
            raise RuntimeError(
                f"{self.binary} is missing: hack/build-binaries.sh training-operator builds it"
            )

    def prepare(self) -> None:
        """Its CRD (server-side: 644 KB), namespace, Secret and serving certificates."""
        crd = _bin_dir() / "training-operator-crds" / "kubeflow.org_pytorchjobs.yaml"
        self.stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        for attempt in range(20):  # a CRD just created has no conditions to wait on yet
            try:
                self.stack.kubectl(
                    "wait", "--for=condition=Established", f"crd/{KF_PLURAL}.{KF_GROUP}",
                    "--timeout=60s",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        self.stack.kubectl("create", "namespace", KF_NAMESPACE)
        self.stack.kubectl(
            "create", "secret", "generic", "training-operator-webhook-cert", "-n", KF_NAMESPACE
        )
        # The webhook server reads them under os.TempDir(); its cert rotator waits for them
        # at this fixed path (pkg/cert/cert.go): with TMPDIR unset, the same folder.
        certs = Path("/tmp/k8s-webhook-server/serving-certs")
        certs.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=training-operator", "-keyout", str(certs / "tls.key"),
             "-out", str(certs / "tls.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        no_init = self.workdir / "init-containers.yaml"
        no_init.write_text("[]\n")  # no alpine init container waiting for the master's DNS
        self.env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
        self.env["MY_POD_NAMESPACE"] = KF_NAMESPACE
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        self.argv = [
            str(self.binary),
            f"--kubeconfig={self.stack.kubeconfig}",
            "--enable-scheme=pytorchjob",
            "--metrics-bind-address=0",
            "--health-probe-bind-address=127.0.0.1:0",
            f"--webhook-server-port={port}",
            f"--pytorch-init-container-template-file={no_init}",
            "--zap-devel=false",
            *(f"--{flag}={value}" for flag, value in KF_CLIENT.items()),
        ]

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )


# --- one size -------------------------------------------------------------------------------


def training_run(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodes": NODES_PER_RUN,
            "procsPerNode": 1,
            "device": "cuda",
            "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}},
            "podTemplate": {
                "labels": {HOLD_LABEL: "true"},
                "nodeSelector": {GPU_POOL_LABEL: "a100"},
            },
        },
    }


def pytorch_job(name: str, namespace: str) -> dict[str, Any]:
    """The same two GPU pods as `training_run` as Kubeflow would run them: Master + Worker."""

    def replica() -> dict[str, Any]:
        container = {
            "name": "pytorch",  # the name Kubeflow looks for
            "image": BENCH_IMAGE,
            "resources": {
                "requests": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": "1"},
                "limits": {"nvidia.com/gpu": "1"},
            },
        }
        return {
            "replicas": 1,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": {HOLD_LABEL: "true", RUN_LABEL: name}},
                "spec": {
                    "nodeSelector": {GPU_POOL_LABEL: "a100"},
                    "containers": [container],
                },
            },
        }

    return {
        "apiVersion": f"{KF_GROUP}/{KF_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(), "Worker": replica()}},
    }


def kwok_nodes(size: int) -> int:
    return max(2, math.ceil(size * NODES_PER_RUN * 1.25 / PODS_PER_NODE))


def list_all(api: Api, path: str) -> tuple[list[dict[str, Any]], str]:
    """Every object at `path`, in pages of 500, and the listing's resourceVersion."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = "?limit=500" + (f"&continue={urllib.parse.quote(token)}" if token else "")
        doc = api.get_json(path + query, timeout=120)
        items += doc.get("items") or []
        token = doc["metadata"].get("continue") or ""
        if not token:
            return items, str(doc["metadata"]["resourceVersion"])


class MLflowSeed:
    """What a run's trainer logs to MLflow (`tradewind.trainer.entrypoint`): a run in the
    run's experiment tagged with its name, namespace and uid, its spec as params (~90: every
    search that returns the run returns them too) and its metrics."""

    def __init__(self, uri: str, experiment: str = "tradewind") -> None:
        from mlflow.tracking import MlflowClient

        from tradewind.operator.reconcile import parse_run
        from tradewind.trainer.tracking import flatten

        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        spec = parse_run(training_run("seed", NAMESPACE)).spec
        self.params = flatten(spec.model_dump(mode="json", by_alias=True, exclude_none=True))

    def log(self, namespace: str, name: str, uid: str) -> None:
        from mlflow.entities import Metric, Param

        tags = {"tradewind.name": name, "tradewind.namespace": namespace, "tradewind.uid": uid}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        params = [Param(k, str(v)) for k, v in self.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        now = int(time.time() * 1000)
        metrics = {"epoch": 3.0, "train_loss": 0.61, "val_loss": 0.64}
        self.client.log_batch(
            run.info.run_id, metrics=[Metric(k, v, now, 3) for k, v in metrics.items()]
        )


def runs_path(namespace: str, mode: str = TRADEWIND) -> str:
    if mode == KUBEFLOW:
        return f"/apis/{KF_GROUP}/{KF_VERSION}/namespaces/{namespace}/{KF_PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def run_body(mode: str, name: str, namespace: str) -> dict[str, Any]:
    return pytorch_job(name, namespace) if mode == KUBEFLOW else training_run(name, namespace)


def operator_children(run_body: dict[str, Any], pods: bool = False) -> list[dict[str, Any]]:
    """What the operator creates for a new run (attempt 0): its ConfigMap, Service and Job,
    from the operator's own builders and settings; with `pods`, the Job's pods instead of
    the Job."""
    from tradewind.operator import builders
    from tradewind.operator.reconcile import parse_run

    run, owner = parse_run(run_body), builders.owner_reference(run_body)
    uid = run_body["metadata"]["uid"]
    job = builders.build_job(run, 0, uid, owner, _bench_settings())
    children = [builders.build_configmap(run, 0, owner), builders.build_service(run, owner)]
    return children + (job_pods(job) if pods else [job])


def job_pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods the Job controller makes of an Indexed Job: per completion index, the
    template with the index in a label, an annotation and JOB_COMPLETION_INDEX, and the
    hostname `<job>-<index>` (what the Service's DNS names), owned as the Job is."""
    meta, spec = job["metadata"], job["spec"]
    pods = []
    for index in range(spec["completions"]):
        template = copy.deepcopy(spec["template"])
        name = f"{meta['name']}-{index}"
        pod_meta = template["metadata"]
        pod_meta["labels"][COMPLETION_INDEX] = str(index)
        pod_meta["annotations"][COMPLETION_INDEX] = str(index)
        pod_spec = template["spec"] | {"hostname": name}
        for container in pod_spec["containers"]:
            container["env"] = [
                *container.get("env", []),
                {"name": "JOB_COMPLETION_INDEX", "value": str(index)},
            ]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": pod_meta
                | {"name": name, "namespace": meta["namespace"]}
                | {"ownerReferences": meta["ownerReferences"]},
                "spec": pod_spec,
            }
        )
    return pods


@functools.cache
def _bench_settings() -> Any:
    """The operator's settings with the bench's image: read once, not per run."""
    from tradewind.operator.settings import OperatorSettings

    return OperatorSettings(trainer_image=BENCH_IMAGE)


CHILD_PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}


def create_run(api: Api, body: dict[str, Any], mode: str) -> str | None:
    """POST a run (and, for the baselines, its children); an error message or None."""
    ns = body["metadata"]["namespace"]
    resp = api.request("POST", runs_path(ns, mode), body, timeout=60)
    if resp.status != 201:
        return f"{resp.status} {resp.data[:200]!r}"
    if mode in BASELINES:
        for child in operator_children(json.loads(resp.data), pods=mode == POD_BASELINE):
            path = CHILD_PATHS[child["kind"]].format(ns=ns)
            resp = api.request("POST", path, child, timeout=60)
            if resp.status != 201:
                return f"{child['kind']}: {resp.status} {resp.data[:200]!r}"
    return None


def apply_runs(api: Api, tracker: Tracker, size: int, workers: int, mode: str) -> dict[str, Any]:
    """POST `size` runs of the mode (with their children, for the baseline) from a thread
    pool; each run's `created` is when its POSTs returned."""
    failures = []

    def create(i: int) -> None:
        name = f"run-{i:05d}"
        error = create_run(api, run_body(mode, name, NAMESPACE), mode)
        if error is not None:
            failures.append(f"{name}: {error}")
            return
        tracker.created(name, time.monotonic())

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(create, range(size)))
    elapsed = time.monotonic() - start
    return {
        "seconds": round(elapsed, 3),
        "per_second": round(size / elapsed, 1),
        "workers": workers,
        "failures": len(failures),
        "first_failures": failures[:3],
    }


def wait_namespace(stack: Stack, namespace: str) -> None:
    stack.kubectl("create", "namespace", namespace)
    # pods need the namespace's default ServiceAccount (made by the controller-manager)
    stack.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=60s"
    )


class Bench:
    """One size on a fresh stack: set-up, the burst, the steady window, tear-down."""

    def __init__(self, size: int, args: argparse.Namespace, workdir: Path, mode: str) -> None:
        self.size, self.args, self.workdir, self.mode = size, args, workdir, mode
        self.baseline = mode in BASELINES
        self.mlflow = bool(args.mlflow) and mode == TRADEWIND
        self.stack = Stack(
            workdir / "stack", kwok_nodes(size), bool(args.profile_apiserver), self.mlflow
        )
        profiled = args.profile_operator and mode == TRADEWIND
        self.profile = workdir / "operator-profile.json" if profiled else None
        self.operator: Operator | None = None
        self.standby: Operator | None = None
        self.sampler: Sampler | None = None
        self.watches: list[Watch] = []
        self.tracker = Tracker(
            size,
            running_from_pods=self.baseline,
            pods_are_children=mode in (KUBEFLOW, POD_BASELINE),
        )
        self.result: dict[str, Any] = {
            "mode": mode,
            "size": size,
            "kwok_nodes": self.stack.nodes,
            "gpus_per_node": GPUS_PER_NODE,
            **({"mlflow": True} if self.mlflow else {}),
        }

    def log(self, message: str) -> None:
        log(f"N={self.size} {self.mode}: {message}")

    def operator_alive(self) -> bool:
        return self.baseline or (self.operator is not None and self.operator.alive())

    def run(self) -> dict[str, Any]:
        """Measure; the stack and the operator are gone when this returns."""
        try:
            self.setup()
            self.burst()
            if self.result.get("interrupted"):
                self.result["rss_mb"] = self.rss()
                raise KeyboardInterrupt("interrupted during the burst")
            if self.mlflow and self.tracker.running >= self.size and self.operator_alive():
                self.seed_mlflow()
            if self.args.steady_seconds > 0 and self.operator_alive():
                self.steady()
            self.result["rss_mb"] = self.rss()
            if (
                self.standby is not None
                and self.tracker.running >= self.size
                and self.size < 10_000
            ):
                self.takeover()
            try:  # after the measurement: an overloaded apiserver may not answer in time
                self.result["events"] = self.events_by_source()
            except Exception as exc:
                self.result["events"] = {"error": repr(exc)[:300]}
            self.result["watch_errors"] = [e for w in self.watches for e in w.errors][:5]
            self.result["harness_watch_connects"] = {w.path: w.connects for w in self.watches}
        finally:
            self.teardown()
        return self.result

    def setup(self) -> None:
        from tradewind.devstack.processes import free_port

        stack, t = self.stack, time.monotonic()
        self.log(f"dev up ({stack.nodes} kwok nodes x {GPUS_PER_NODE} GPUs) in {stack.dir}")
        stack.up()
        self.result["stack_up_s"] = round(time.monotonic() - t, 1)
        stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        stack.kubectl(
            "wait", "--for=condition=Established", "crd",
            "-l", "app.kubernetes.io/part-of=tradewind", "--timeout=60s",
        )  # fmt: skip
        for namespace in (NAMESPACE, WARMUP_NAMESPACE):
            wait_namespace(stack, namespace)

        t = time.monotonic()
        self.api = Api(stack.kubeconfig, pool_size=max(32, self.args.apply_workers + 8))
        pids = {**stack.pids, "harness": os.getpid()}
        if self.mode == TRADEWIND:
            self.operator = Operator(
                stack.env(), self.workdir / "operator.log", self.profile,
                metrics_port=free_port() if self.mlflow else None,
            )  # fmt: skip
        elif self.mode == KUBEFLOW:
            self.operator = kubeflow = KubeflowOperator(
                stack, self.workdir, self.workdir / "operator.log"
            )
            kubeflow.prepare()
        if self.operator is not None:
            self.operator.start()
            pids["operator"] = self.operator.pid
        warmup = run_body(self.mode, "warmup", WARMUP_NAMESPACE)
        error = create_run(self.api, warmup, self.mode)
        if error is not None:
            raise RuntimeError(f"warm-up run not created: {error}")
        if self.baseline:
            for index in range(NODES_PER_RUN):
                stack.kubectl(
                    "wait", "--for=jsonpath={.status.phase}=Running", "pod", "-n",
                    WARMUP_NAMESPACE, "-l", f"{RUN_LABEL}=warmup,{COMPLETION_INDEX}={index}",
                    "--timeout=120s",
                )  # fmt: skip
        else:
            kind = "pytorchjob" if self.mode == KUBEFLOW else "trainingrun"
            stack.kubectl(
                "wait", "--for=condition=Running", f"{kind}/warmup", "-n", WARMUP_NAMESPACE,
                "--timeout=120s",
            )  # fmt: skip
        self.result["operator_ready_s"] = round(time.monotonic() - t, 1)
        if self.mode == TRADEWIND and self.args.takeover:
            self.standby = Operator(stack.env(), self.workdir / "standby.log", None)
            self.standby.start()  # the first holds the Lease: the warm-up is Running
        self.log(f"ready after {self.result['operator_ready_s']} s (warm-up Running)")

        self.sampler = Sampler(pids)
        self.sampler.start()
        self.watches = [
            Watch(self.api, runs_path(NAMESPACE, self.mode), self.tracker.on_run),
            Watch(self.api, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", self.tracker.on_job),
            Watch(self.api, f"/api/v1/namespaces/{NAMESPACE}/pods", self.tracker.on_pod),
        ]
        for watch in self.watches:
            watch.start()

    def burst(self) -> None:
        """Apply every run; wait (on the watches) until all are Running or the timeout."""
        assert self.sampler is not None
        api, tracker, size, result = self.api, self.tracker, self.size, self.result
        op_pid = self.operator.pid if self.operator is not None else None
        threads0 = thread_cpu_split(op_pid) if op_pid else {}
        metrics0, cpu0 = api.metrics(), self.sampler.snapshot()
        load0 = os.getloadavg()
        t0 = time.monotonic()
        self.log(f"applying {size} runs ({self.args.apply_workers} workers)")
        profiler = self.profile_apiserver(self.args.profile_apiserver)
        result["apply"] = apply_runs(api, tracker, size, self.args.apply_workers, self.mode)
        self.log(
            f"applied in {result['apply']['seconds']} s ({result['apply']['per_second']}/s); "
            "waiting for Running"
        )
        last_report = time.monotonic()
        try:
            while not tracker.all_running.wait(1.0):
                now = time.monotonic()
                if now > t0 + self.args.timeout or not self.operator_alive():
                    break
                if now - last_report >= 10:
                    last_report = now
                    self.log(f"{now - t0:5.1f} s: {tracker.jobs} Jobs, {tracker.running} Running")
        except KeyboardInterrupt:  # stopped by hand: what was measured so far is recorded
            result["interrupted"] = True
        t_end = time.monotonic()
        if profiler is not None:
            profiler.join()
        cpu1, metrics1 = self.sampler.snapshot(), api.metrics()
        threads1 = thread_cpu_split(op_pid) if op_pid else {}

        job_times = [times["job"] for times in tracker.t.values() if "job" in times]
        result |= {
            "timed_out": tracker.running < size,
            "operator_alive": self.operator_alive(),
            "runs_running": tracker.running,
            "jobs_created": len(job_times),
            "runs_lost": size - tracker.running,
            "runs_with_duplicate_jobs": sum(
                len(names) > 1 for run, names in tracker.job_names.items() if run != "warmup"
            ),
            "all_jobs_s": round(max(job_times) - t0, 3) if len(job_times) >= size else None,
            "all_running_s": round(t_end - t0, 3) if tracker.running >= size else None,
        }
        self.log(
            f"{tracker.running}/{size} Running after {t_end - t0:.1f} s "
            f"(all Jobs after {result['all_jobs_s']} s)"
        )
        runs = [ts for name, ts in tracker.t.items() if name.startswith("run-")]

        def spans(a: str, b: str) -> dict[str, float | None]:
            return percentiles([ts[b] - ts[a] for ts in runs if {a, b} <= ts.keys()])

        result["latency_s"] = spans("created", "running")
        result["server_latency_s"] = percentiles(list(tracker.server_latency.values()))
        result["stages_s"] = {label: spans(a, b) for label, a, b in STAGES}
        result["operator_detail_s"] = {label: spans(a, b) for label, a, b in OPERATOR_DETAIL}
        result["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1}
        result["loadavg"] = {
            "start": [round(x, 2) for x in load0],
            "end": [round(x, 2) for x in os.getloadavg()],
        }
        result["operator_threads_cpu_s"] = {
            k: round(threads1.get(k, 0.0) - threads0.get(k, 0.0), 2) for k in threads1
        }
        result["apiserver_requests"] = _diff_requests(metrics0, metrics1)
        result["timeline_pct_of_core"] = self.sampler.timeline(t0, t_end)

    def profile_apiserver(self, seconds: float | None) -> threading.Thread | None:
        """With --profile-apiserver: the apiserver's Go CPU profile of the burst's first
        `seconds` (/debug/pprof/profile; the stack runs with `dev up --profiling`), saved next
        to the stack and summarised with `go tool pprof -top -cum` where Go is installed."""
        if not seconds:
            return None
        out = self.workdir / "kube-apiserver.pprof"

        def fetch() -> None:
            path = f"/debug/pprof/profile?seconds={int(seconds)}"
            response = self.api.request("GET", path, timeout=seconds + 60)
            if response.status != 200:
                self.result["apiserver_profile"] = {"error": f"HTTP {response.status}"}
                return
            out.write_bytes(response.data)
            self.result["apiserver_profile"] = _pprof_summary(out, seconds)
            if self.args.keep_logs:
                shutil.copy(out, Path(self.args.keep_logs) / f"kube-apiserver-{self.size}.pprof")

        thread = threading.Thread(target=fetch, name="apiserver-profile", daemon=True)
        thread.start()
        return thread

    def steady(self) -> None:
        """Every run Running, nothing to converge: what does keeping them cost?"""
        assert self.sampler is not None
        seconds = self.args.steady_seconds
        running = "every run" if self.tracker.running >= self.size else "the runs so far"
        self.log(f"steady state, {seconds:.0f} s with {running} Running")
        reconciles = self.operator.reconciles if isinstance(self.operator, Operator) else None
        cpu0, metrics0 = self.sampler.snapshot(), self.api.metrics()
        reconciles0 = reconciles() if reconciles else None
        time.sleep(seconds)
        cpu1, metrics1 = self.sampler.snapshot(), self.api.metrics()
        reconciles1 = reconciles() if reconciles else None
        self.result["steady"] = {
            "seconds": seconds,
            "cpu_pct_of_core": {k: round(100 * (cpu1[k] - cpu0[k]) / seconds, 1) for k in cpu1},
            "apiserver_requests": _diff_requests(metrics0, metrics1),
        }
        if reconciles0 is not None and reconciles1 is not None:
            self.result["steady"]["reconciles_per_second"] = round(
                (reconciles1 - reconciles0) / seconds, 2
            )

    def seed_mlflow(self) -> None:
        """Log to MLflow what each run's trainer would have (`MLflowSeed`) and wait until
        every run's status shows it: the operator's reads found it and wrote it."""
        seed = MLflowSeed(self.stack.env()["MLFLOW_TRACKING_URI"])
        runs = [
            (item["metadata"]["name"], item["metadata"]["uid"])
            for item in list_all(self.api, runs_path(NAMESPACE))[0]
        ]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda run: seed.log(NAMESPACE, *run), runs))
        logged = time.monotonic() - t0
        self.log(f"MLflow: {len(runs)} runs logged in {logged:.1f} s; waiting for the statuses")
        deadline, shown = time.monotonic() + self.args.timeout, 0
        while time.monotonic() < deadline:
            items, _ = list_all(self.api, runs_path(NAMESPACE))
            shown = sum(bool((i.get("status") or {}).get("mlflow", {}).get("runId")) for i in items)
            if shown >= len(runs):
                break
            time.sleep(5)
        self.result["mlflow_seed"] = {
            "runs": len(runs),
            "logged_s": round(logged, 1),
            "all_statuses_show_it_s": round(time.monotonic() - t0, 1),
            "statuses_showing_it": shown,
        }
        self.log(f"MLflow: {shown} statuses show their run after {time.monotonic() - t0:.1f} s")

    def takeover(self) -> None:
        """The leader killed with every run Running and each status set back to Pending by
        the harness meanwhile: how long until the standby has them all Running again."""
        assert self.operator is not None and self.standby is not None
        t0 = time.monotonic()
        os.kill(self.operator.pid, signal.SIGKILL)
        self.operator.proc.wait(timeout=30)  # type: ignore[union-attr]
        names = sorted(n for n in self.tracker.t if n.startswith("run-"))
        self.log(f"leader killed; {len(names)} statuses set to Pending; waiting for the standby")

        def stale(name: str) -> None:
            path = f"{runs_path(NAMESPACE)}/{name}/status"
            body = json.dumps({"status": {"phase": "Pending"}}).encode()
            headers = {"Content-Type": "application/merge-patch+json"}
            self.api.pool.request("PATCH", self.api.host + path, body=body, headers=headers)

        with concurrent.futures.ThreadPoolExecutor(self.args.apply_workers) as pool:
            list(pool.map(stale, names))
        staled = time.monotonic() - t0
        running, deadline = 0, t0 + self.args.timeout
        while time.monotonic() < deadline and self.standby.alive():
            items = self.api.get_json(runs_path(NAMESPACE)).get("items", [])
            running = sum(_is_running(r) for r in items if r["metadata"]["name"] in names)
            if running >= len(names):
                break
            time.sleep(1.0)
        self.result["takeover"] = {
            "lease_duration_s": _bench_settings().lease_duration_seconds,
            "statuses_staled_in_s": round(staled, 1),
            "all_running_again_s": round(time.monotonic() - t0, 1)
            if running >= len(names)
            else None,
            "running_again": running,
            "standby_rss_peak_mb": round(proc_status_mb(self.standby.pid, "VmHWM") or 0.0, 1),
        }
        self.log(f"take-over: {self.result['takeover']}")

    def events_by_source(self) -> dict[str, int]:
        """Events in the bench namespace by who posted them, about what kind, and why (the
        core and events.k8s.io APIs are two views of the same objects: one is read)."""
        counts: collections.Counter[str] = collections.Counter()
        for ev in self.api.get_json(f"/api/v1/namespaces/{NAMESPACE}/events").get("items", []):
            source = (
                ev.get("reportingComponent") or (ev.get("source") or {}).get("component") or "?"
            )
            kind = (ev.get("involvedObject") or {}).get("kind", "?")
            counts[f"{source} {kind} {ev.get('reason')}"] += max(1, int(ev.get("count") or 1))
        return dict(counts.most_common(20))

    def rss(self) -> dict[str, float]:
        op = {}
        if self.operator is not None:
            op = {
                "operator_peak": round(proc_status_mb(self.operator.pid, "VmHWM") or 0.0, 1),
                "operator_end": round(proc_status_mb(self.operator.pid, "VmRSS") or 0.0, 1),
            }
        return {
            **op,
            **{
                f"{k}_peak": round(proc_status_mb(pid, "VmHWM") or 0.0, 1)
                for k, pid in self.stack.pids.items()
            },
        }

    def final_profile(self) -> None:
        """Ask the profiler for its last dump, with the memory breakdown; wait for it."""
        assert self.operator is not None and self.profile is not None
        os.kill(self.operator.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self.profile.read_text()).get("memory"):
                    return

    def teardown(self) -> None:
        for watch in self.watches:
            watch.stopped.set()
        if self.sampler is not None:
            self.sampler.stop()
        if self.operator is not None:
            if self.profile is not None and self.operator.alive():
                self.final_profile()
            self.operator.stop()
            self.result["operator_log"] = self.operator.log_summary()
            if self.standby is not None:
                self.standby.stop()
            if self.args.keep_logs:
                mode = self.mode.replace(" ", "-")
                dest = Path(self.args.keep_logs) / f"operator-{self.size}-{mode}.log"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.operator.log_path, dest)
        if self.profile is not None and self.profile.is_file():
            self.result["operator_profile"] = json.loads(self.profile.read_text())
        with contextlib.suppress(OSError):
            self.result["component_log_signals"] = component_log_signals(self.stack.dir / "logs")
        self.log("tearing down")
        self.stack.down()


LOG_SIGNALS = {
    "watcher closed (too slow)": "unresponsiveness",
    "watch cache lagging": "objects queued in incoming channel",
    "client-side throttling": "Throttling request took",
    "update conflicts": "the object has been modified",
    "kwok errors": '"level":"ERROR"',
}
"""Lines in the components' logs that say the cluster itself was struggling."""


def _pprof_summary(profile: Path, seconds: float) -> dict[str, Any]:
    """The functions with the most cumulative CPU in a Go profile (`go tool pprof -top -cum`),
    as "share% function"; only the file's name where Go is not installed."""
    summary: dict[str, Any] = {"seconds": seconds, "file": profile.name}
    go = shutil.which("go")
    if go is None:
        return summary | {"top_cum": "go not found: run `go tool pprof -top -cum` on the file"}
    result = subprocess.run(
        [go, "tool", "pprof", "-top", "-cum", "-nodecount=80",
         str(_bin_dir() / "kube-apiserver"), str(profile)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    rows = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[4].endswith("%") and parts[3].endswith("s"):
            rows.append(f"{parts[4]} {' '.join(parts[5:])}")
    return summary | {"top_cum": rows}


def component_log_signals(logs: Path) -> dict[str, dict[str, int]]:
    """How often each LOG_SIGNALS pattern appears in each component's log (read before
    `dev down --purge` deletes them)."""
    out: dict[str, dict[str, int]] = {}
    for log_file in sorted(logs.glob("*.log")):
        text = log_file.read_text(errors="replace")
        counts = {name: text.count(pattern) for name, pattern in LOG_SIGNALS.items()}
        if any(counts.values()):
            out[log_file.stem] = {k: v for k, v in counts.items() if v}
    return out


def _diff_requests(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    diff = {k: int(v - before.get(k, 0.0)) for k, v in after.items()}
    top = sorted(((v, k) for k, v in diff.items() if v > 0), reverse=True)
    return {k: v for v, k in top[:25]}


# --- the sampling profiler for `_operator` mode ---------------------------------------------

IDLE_LEAVES = {
    ("selectors.py", "select"),
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("thread.py", "_worker"),
    ("queue.py", "get"),
}


def _where(code: Any) -> str:
    path = code.co_filename
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib/" + path.split("/", 1)[1]
            break
    return f"{path}:{code.co_name}"


def _package(code: Any) -> str:
    where = _where(code)
    head = where.split("/", 1)[0]
    if head == "stdlib":
        return "stdlib/" + where.split("/")[1].split(":")[0].removesuffix(".py")
    if head == "tradewind":
        return "/".join(where.split("/")[:2]).split(":")[0].removesuffix(".py")
    return head.split(":")[0].removesuffix(".py")


class Profiler:
    """Charges each thread's CPU (its pthread CPU clock) since the last sample to its current
    Python stack. Every 5 s, and on SIGUSR1, writes the top functions (self and inclusive),
    CPU by package of the leaf frame and by thread, and the meters; the SIGUSR1 dump adds
    where the memory is (_memory_breakdown)."""

    def __init__(self, out: Path, interval: float = 0.01) -> None:
        self.out, self.interval = out, interval
        self.self_cpu: collections.Counter[str] = collections.Counter()
        self.incl_cpu: collections.Counter[str] = collections.Counter()
        self.pkg_cpu: collections.Counter[str] = collections.Counter()
        self.thread_cpu: collections.Counter[str] = collections.Counter()
        self.last: dict[int, float] = {}
        self.me = 0
        self.main = threading.main_thread().ident
        self.final = threading.Event()
        self.memory: dict[str, float] = {}

    def start(self) -> None:
        thread = threading.Thread(target=self.loop, daemon=True, name="profiler")
        thread.start()
        self.me = thread.ident or 0
        signal.signal(signal.SIGUSR1, lambda *_: self.final.set())

    def loop(self) -> None:
        next_dump = time.monotonic() + 5
        while True:
            time.sleep(self.interval)
            self.sample()
            if self.final.is_set():
                self.memory = _memory_breakdown()
                self.final.clear()
                next_dump = 0.0
            if time.monotonic() >= next_dump:
                next_dump = time.monotonic() + 5
                self.dump()

    def sample(self) -> None:
        for tid, frame in sys._current_frames().items():
            if tid == self.me:
                continue
            try:
                cpu = time.clock_gettime(time.pthread_getcpuclockid(tid))
            except OSError:
                continue
            delta, self.last[tid] = cpu - self.last.get(tid, cpu), cpu
            if delta <= 0:
                continue
            code = frame.f_code
            kind = "main (asyncio loop)" if tid == self.main else "worker threads"
            self.thread_cpu[kind] += delta
            if (Path(code.co_filename).name, code.co_name) in IDLE_LEAVES:
                self.thread_cpu[kind + ", in a waiting leaf"] += delta
            self.self_cpu[_where(code)] += delta
            self.pkg_cpu[_package(code)] += delta
            seen = set()
            f: Any = frame
            while f is not None:
                where = _where(f.f_code)
                if where not in seen:
                    seen.add(where)
                    self.incl_cpu[where] += delta
                f = f.f_back

    def dump(self) -> None:
        def top(counter: collections.Counter[str], n: int) -> dict[str, float]:
            return {k: round(v, 2) for k, v in counter.most_common(n)}

        doc = {
            "profiled_cpu_s": round(sum(self.self_cpu.values()), 2),
            "by_thread": top(self.thread_cpu, 10),
            "by_package_self": top(self.pkg_cpu, 15),
            "top_self": top(self.self_cpu, 25),
            "top_inclusive": top(self.incl_cpu, 45),
            "calls": METER.report(),
            "memory": self.memory,
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.out)


def _memory_breakdown() -> dict[str, Any]:
    """Where the operator's memory is: deep size of the children's indexes (dicts, lists and
    scalars only) and the most numerous object types."""
    import gc

    from tradewind.operator.children import ChildIndex

    gc.collect()
    objects = gc.get_objects()
    seen: set[int] = set()

    def deep(root: Any) -> int:
        total, stack = 0, [root]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            total += sys.getsizeof(obj)
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, list | tuple | set | frozenset):
                stack.extend(obj)
            elif isinstance(obj, ChildIndex):
                stack.append(vars(obj))
        return total

    out: dict[str, Any] = {}
    for obj in objects:
        if isinstance(obj, ChildIndex):
            out[f"{obj.plural} index"] = {"children": len(obj), "mb": round(deep(obj) / 2**20, 1)}
    counts = collections.Counter(type(o).__name__ for o in objects)
    out["gc_objects"] = len(objects)
    out["top_types"] = dict(counts.most_common(12))
    return out


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


class Meter:
    """Exact per-call accounting of chosen functions: calls, CPU of the calling thread
    (time.thread_time, so waits on the network or the GIL are not counted) and wall time;
    for the default executor behind asyncio.to_thread, how long work waited for a thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.cpu: collections.Counter[str] = collections.Counter()
        self.wall: collections.Counter[str] = collections.Counter()
        self.waits: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, name: str, cpu: float, wall: float) -> None:
        with self.lock:
            self.calls[name] += 1
            self.cpu[name] += cpu
            self.wall[name] += wall

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.thread_time() - cpu, time.perf_counter() - wall)

        return timed

    def wrap_async(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Calls and wall time only: CPU across awaits belongs to other tasks too."""

        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            wall = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name, 0.0, time.perf_counter() - wall)

        return timed

    def report(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                name: {
                    "calls": n,
                    "cpu_s": round(self.cpu[name], 3),
                    "wall_s": round(self.wall[name], 3),
                    "cpu_ms_per_call": round(1000 * self.cpu[name] / n, 3),
                    "wall_ms_per_call": round(1000 * self.wall[name] / n, 3),
                }
                for name, n in self.calls.most_common()
            }
            for name, waits in self.waits.items():
                out[f"queue wait for a thread: {name}"] = percentiles(list(waits))
        return out


METER = Meter()


def _instrument() -> None:
    """Wrap the operator's functions (the same code, timed) before kopf registers anything."""
    import asyncio

    from kopf._core.reactor import processing

    from tradewind.operator import builders, kube, loop, reconcile

    processing.process_resource_event = METER.wrap_async(
        "kopf process_resource_event (wall)", processing.process_resource_event
    )
    loop.reconcile = METER.wrap("reconcile (all of it)", reconcile.reconcile)
    reconcile.parse_run = METER.wrap("reconcile: parse_run (pydantic)", reconcile.parse_run)
    builders.build_configmap = METER.wrap("build_configmap (YAML)", builders.build_configmap)
    for method in ("create", "delete", "patch_status", "event", "set_job_suspended"):
        setattr(kube.Kube, method, METER.wrap(f"Kube.{method} (HTTP)", getattr(kube.Kube, method)))
    to_thread = asyncio.to_thread

    async def timed_to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        submitted = time.perf_counter()
        name = getattr(func, "__name__", "?")

        def run(*a: Any, **k: Any) -> Any:
            wait = time.perf_counter() - submitted
            with METER.lock:
                METER.waits[name].append(wait)
            return func(*a, **k)

        return await to_thread(run, *args, **kwargs)

    asyncio.to_thread = timed_to_thread  # type: ignore[assignment]


def _loop_lag_monitor() -> None:
    """A kopf startup handler that measures the event loop's lag (how late a 50 ms sleep
    wakes): the main thread is kopf's, so its lag delays every watch event."""
    import asyncio

    import kopf

    async def monitor() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.05)
            METER.waits["(event loop lag)"].append(time.perf_counter() - start - 0.05)

    tasks: list[Any] = []

    @kopf.on.startup()
    async def start_lag_monitor(**_: Any) -> None:
        tasks.append(asyncio.get_running_loop().create_task(monitor()))


def operator_child(profile_path: str) -> None:
    """`_operator PROFILE`: the operator, as `tradewind operator` runs it, with the profiler
    and the meters."""
    from tradewind.operator.loop import run_operator

    _instrument()
    _loop_lag_monitor()
    Profiler(Path(profile_path)).start()
    run_operator([])


# --- report ---------------------------------------------------------------------------------


def versions(stack_bin: Path) -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("tradewind", "kopf", "kubernetes", "pydantic", "aiohttp", "urllib3"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    for binary, flag in (
        ("kube-apiserver", "--version"),
        ("kwok", "--version"),
        ("etcd", "--version"),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [str(stack_bin / binary), flag], capture_output=True, text=True, timeout=30
            ).stdout
            out[binary] = text.splitlines()[0].strip() if text else "?"
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu_model": model,
        "cpus_available": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_gb, 1),
        "kernel": platform.release(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _short_mode(result: dict[str, Any]) -> str:
    mode = str(result.get("mode"))
    return "baseline" if mode == BASELINE else "tradewind" if mode == "operator" else mode


def print_table(results: list[dict[str, Any]]) -> None:
    def f(value: Any, width: int, digits: int = 1) -> str:
        if value is None:
            return "-".rjust(width)
        if isinstance(value, float):
            return f"{value:.{digits}f}".rjust(width)
        return str(value).rjust(width)

    head = (
        f"{'mode':>9} {'runs':>5} {'nodes':>5} {'apply s':>7} {'jobs s':>7} {'run s':>7} "
        f"{'p50 s':>6} {'p99 s':>6} {'req/run':>7} {'opRSS MB':>8} | CPU s: {'oper':>5} "
        f"{'apisrv':>6} {'etcd':>5} {'kcm':>5} {'sched':>5} {'kwok':>5} {'harn':>5} {'other':>5}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        mode = _short_mode(r)
        if "apply" not in r:
            print(f"{mode:>9} {r['size']:>5} failed: {r.get('error', '?')}")
            continue
        cpu, lat = r.get("cpu_s", {}), r.get("latency_s", {})
        requests = round(sum((r.get("apiserver_requests") or {}).values()) / r["size"], 1)
        running = r.get("all_running_s")
        run_s = (
            f(running, 7)
            if running is not None
            else f"{r.get('runs_running', '?')}/{r['size']}".rjust(7)
        )
        print(
            f"{mode:>9} {r['size']:>5} {r['kwok_nodes']:>5} {f(r['apply']['seconds'], 7)} "
            f"{f(r.get('all_jobs_s'), 7)} {run_s} {f(lat.get('p50'), 6, 2)} "
            f"{f(lat.get('p99'), 6, 2)} {f(requests, 7)} "
            f"{f(r.get('rss_mb', {}).get('operator_peak'), 8)} | "
            f"       {f(cpu.get('operator'), 5)} {f(cpu.get('kube-apiserver'), 6)} "
            f"{f(cpu.get('etcd'), 5)} {f(cpu.get('kube-controller-manager'), 5)} "
            f"{f(cpu.get('kube-scheduler'), 5)} {f(cpu.get('kwok'), 5)} {f(cpu.get('harness'), 5)} "
            f"{f(cpu.get('other processes'), 5)}"
        )
    print("\nper-run stage latency, p50 / p99 s:")
    labels = [label for label, _, _ in STAGES]
    print(f"{'mode':>9} {'runs':>5}  " + "  ".join(f"{label:>34}" for label in labels))
    for r in results:
        stages = r.get("stages_s")
        if not stages:
            continue
        cells = [
            f"{f(stages[label]['p50'], 6, 2)} / {f(stages[label]['p99'], 6, 2)}".rjust(34)
            for label in labels
        ]
        mode = _short_mode(r)
        print(f"{mode:>9} {r['size']:>5}  " + "  ".join(cells))
    print()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_operator":
        operator_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/operator_scale.json")
    parser.add_argument("--apply-workers", type=int, default=16)
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="Per size: give up waiting for Running."
    )
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=15.0,
        help="After all are Running, measure CPU this long (the operator's status poll is 15 s).",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=ALL_MODES,
        default=list(MODES),
        help="What runs each size on a fresh stack: Tradewind's operator, Kubeflow's training "
        "operator (PyTorchJobs; hack/build-binaries.sh training-operator), the control plane "
        "alone (see the docstring; default: those three), or the control plane alone with "
        "the pods POSTed instead of the Job. The order rotates from one size (and round) to "
        "the next.",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="Measure each size this many times per mode."
    )
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help="Tradewind: the stack runs MLflow and the operator reads the runs' progress; once "
        "all are Running, each gets an MLflow run with metrics (nothing more is logged after), "
        "so the steady window shows what progress reads cost when they find nothing new.",
    )
    parser.add_argument(
        "--takeover",
        action="store_true",
        help="Tradewind: run a standby replica; once all are Running, kill the leader, set "
        "every status back to Pending and time the standby bringing them all to Running.",
    )
    parser.add_argument(
        "--at-10k",
        action="store_true",
        help="Then 10,000 TrainingRuns, Tradewind only (timeout 3600 s): all Running, none lost "
        "or duplicated, operator RSS and CPU per run, apiserver and etcd memory.",
    )
    parser.add_argument("--profile-operator", action="store_true")
    parser.add_argument(
        "--profile-apiserver",
        type=float,
        metavar="SECONDS",
        help="Take the apiserver's Go CPU profile over the first SECONDS of each burst.",
    )
    parser.add_argument("--keep-logs", help="Copy each size's operator log into this folder.")
    parser.add_argument(
        "--attach-profile",
        type=Path,
        nargs="+",
        help="JSON of earlier --profile-operator runs to include under `profiled_runs`.",
    )
    args = parser.parse_args()

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    started = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(_bin_dir()),
        "config": {
            "run": training_run("run-NNNNN", NAMESPACE),
            "kubeflow_job": pytorch_job("run-NNNNN", NAMESPACE),
            "kubeflow_flags": KF_CLIENT,
            "modes": args.modes,
            "rounds": args.rounds,
            "nodes_per_run": NODES_PER_RUN,
            "pods_per_kwok_node_planned": PODS_PER_NODE,
            "apply": f"POST from a thread pool of {args.apply_workers}",
            "operator": "tradewind operator, clusterwide, TRADEWIND_* defaults, no MLflow",
            "status_poll_seconds": 15,
            "profiled": args.profile_operator,
            "kwok_stages": _kwok_stages(),
            "components_flags": "tradewind/devstack/components.py",
        },
        "targets": {
            "runs": TARGET_RUNS,
            "tradewind_over_baseline_at_most": TARGET_BASELINE_RATIO,
            "kubeflow_over_tradewind_at_least": TARGET_PEER_RATIO,
            "operator_rss_mb_under": TARGET_RSS_MB,
            "at_10k_operator_rss_mb_under": TARGET_10K_RSS_MB,
        },
        "results": [],
    }
    if args.attach_profile:
        doc["profiled_runs"] = [
            _profiled_run(json.loads(p.read_text())) for p in args.attach_profile
        ]
    plan = [
        (size, mode)
        for turn, size in enumerate(s for s in args.sizes for _ in range(args.rounds))
        for mode in _rotated(args.modes, turn)
    ]
    if args.at_10k:
        plan.append((10_000, TRADEWIND))
    try:
        for size, mode in plan:
            if size == 10_000:
                args.timeout = max(args.timeout, 3600.0)
            with tempfile.TemporaryDirectory(prefix=f"tw-opscale-{size}-") as tmp:
                bench = Bench(size, args, Path(tmp), mode)
                try:
                    doc["results"].append(bench.run())
                except Exception as exc:  # recorded with what was measured; stack is down
                    log(f"N={size} {mode}: failed: {exc}")
                    doc["results"].append({**bench.result, "error": str(exc)[:2000]})
                except KeyboardInterrupt:
                    doc["results"].append({**bench.result, "error": "interrupted"})
                    raise
    finally:
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc["wall_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
        doc["targets"]["met"] = _targets_met(doc["results"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print_table(doc["results"])
        print(f"targets: {json.dumps(doc['targets']['met'])}")
        print(f"wrote {args.out}")


def _rotated(modes: list[str], turn: int) -> list[str]:
    """The modes, starting one further along each turn: none always goes first."""
    k = turn % len(modes)
    return modes[k:] + modes[:k]


def _kwok_stages() -> dict[str, Any]:
    from tradewind.devstack.kwok import STAGES

    return {
        "source": "tradewind/devstack/kwok.py STAGES: (delay ms, jitter ms), None = kwok's",
        "stages": {rel: list(timing) if timing else None for rel, timing in STAGES.items()},
    }


def _profiled_run(profiled: dict[str, Any]) -> dict[str, Any]:
    """What a --profile-operator run found, per size: the meters and profiles, and the
    headline numbers (slower than unprofiled ones)."""
    keep = ("size", "all_running_s", "latency_s", "stages_s", "operator_detail_s", "cpu_s")
    return {
        "date": profiled.get("date"),
        "note": "the operator ran with meters and a sampling profiler: timings are inflated",
        "results": [
            {**{k: r.get(k) for k in keep}, "operator_profile": r.get("operator_profile")}
            for r in profiled.get("results", [])
        ],
    }


def _targets_met(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each mode's median all-Running time at TARGET_RUNS (over rounds), the ratios, RSS;
    the 10,000-run check."""

    def median_running(mode: str, size: int) -> float | None:
        times = [
            r["all_running_s"]
            for r in results
            if r.get("size") == size and r.get("mode") == mode and r.get("all_running_s")
        ]
        return round(statistics.median(times), 1) if times else None

    def peak_rss(size: int) -> float | None:
        peaks = [
            r.get("rss_mb", {}).get("operator_peak")
            for r in results
            if r.get("size") == size and r.get("mode") == TRADEWIND
        ]
        return max((p for p in peaks if p), default=None)

    tradewind, kubeflow = (
        median_running(TRADEWIND, TARGET_RUNS),
        median_running(KUBEFLOW, TARGET_RUNS),
    )
    floor = median_running(BASELINE, TARGET_RUNS)
    running = {TRADEWIND: tradewind, KUBEFLOW: kubeflow, BASELINE: floor}
    if pods_floor := median_running(POD_BASELINE, TARGET_RUNS):
        running[POD_BASELINE] = pods_floor
    out: dict[str, Any] = {
        "all_running_s": running,
        "tradewind_over_baseline": round(tradewind / floor, 2) if tradewind and floor else None,
        "kubeflow_over_tradewind": round(kubeflow / tradewind, 2)
        if tradewind and kubeflow
        else None,
        "operator_rss_peak_mb": peak_rss(TARGET_RUNS),
    }
    out["met"] = {
        "baseline_ratio": out["tradewind_over_baseline"] is not None
        and out["tradewind_over_baseline"] <= TARGET_BASELINE_RATIO,
        "peer_ratio": out["kubeflow_over_tradewind"] is not None
        and out["kubeflow_over_tradewind"] >= TARGET_PEER_RATIO,
        "rss": out["operator_rss_peak_mb"] is not None
        and out["operator_rss_peak_mb"] < TARGET_RSS_MB,
    }
    at_10k = [r for r in results if r.get("size") == 10_000 and r.get("mode") == TRADEWIND]
    if at_10k:
        r = at_10k[-1]
        out["at_10k"] = {
            "all_running_s": r.get("all_running_s"),
            "runs_lost": r.get("runs_lost"),
            "runs_with_duplicate_jobs": r.get("runs_with_duplicate_jobs"),
            "operator_rss_peak_mb": peak_rss(10_000),
        }
        out["met"]["at_10k"] = (
            r.get("runs_lost") == 0
            and r.get("runs_with_duplicate_jobs") == 0
            and (peak_rss(10_000) or math.inf) < TARGET_10K_RSS_MB
        )
    return out


if __name__ == "__main__":
    main()
