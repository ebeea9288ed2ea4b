"""The whole loop with pods in containers: `kubectl apply` -> operator -> Indexed Job -> pods
on the real node (kubelet, containerd, runc, CNI, CoreDNS) from the trainer image built from
the Dockerfile -> torchrun across two pods -> checkpoints in MinIO, metrics in MLflow ->
status; an RLRun ensemble's agents in parallel pods; a Sweep's trials two at a time.

The stack is this module's own (nodes=0, the real node; one real node per machine): the
stack's MinIO and MLflow reach the pods through the node's relay, and the operator runs as a
process here. The failure drills (a killed container, OOMKilled, MinIO down, the operator
killed) run in tests/integration/test_images.py, with the chart's operator, MinIO and MLflow.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl, stack_of_its_own
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_real_node import container_init_pid
from tests.tiny import tiny_spec
from tradewind.devstack import DevStack, StackConfig, images, real_node
from tradewind.devstack.images import TRAINER_IMAGE
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.storage import S3Store, s3_client_from_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the real node needs root"),
]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "trainingrun-quickstart-2node.yaml"
SECRET = "minio-credentials"


@pytest.fixture(scope="module")
def xstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    config = StackConfig(dev_dir=tmp_path_factory.mktemp("xstack"), nodes=0, real_node=True)
    with stack_of_its_own(config) as stack:
        images.build("trainer", TRAINER_IMAGE, stack.dir / "logs" / "images.log", lambda _: None)
        plan = real_node.load_plan(stack)
        assert plan is not None
        images.load_into_node(plan, TRAINER_IMAGE)
        yield stack


@pytest.fixture(scope="module")
def xkubectl(xstack: DevStack) -> Kubectl:
    kubectl = Kubectl(xstack)
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl.wait("--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=tradewind")
    return kubectl


@pytest.fixture(scope="module")
def xoperator(
    xstack: DevStack, xkubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    folder = tmp_path_factory.mktemp("xoperator")
    op = OperatorProcess(xstack, folder)
    op.env |= xstack.pod_endpoints()  # pods reach MinIO and MLflow through the node's relay
    op.env["TRADEWIND_TRAINER_IMAGE"] = TRAINER_IMAGE
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ns(xstack: DevStack, xkubectl: Kubectl) -> Iterator[str]:
    name = f"x-{os.urandom(4).hex()}"
    xkubectl.run("create", "namespace", name)
    xkubectl.wait("--for=create", "serviceaccount/default", "-n", name)
    creds = xstack.state["minio"]
    xkubectl.run(
        "create", "secret", "generic", SECRET, "-n", name,
        f"--from-literal=AWS_ACCESS_KEY_ID={creds['user']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={creds['password']}",
    )  # fmt: skip
    yield name
    xkubectl.run("delete", "namespace", name, "--wait=false", check=False)


# --- helpers -------------------------------------------------------------------------


def _enforce_restricted(kubectl: Kubectl, ns: str) -> None:
    """PodSecurity `restricted` in `ns`: the pods that really run must be admitted there and
    train with its read-only root."""
    mode = "pod-security.kubernetes.io/enforce"
    kubectl.run("label", "namespace", ns, f"{mode}=restricted", f"{mode}-version=latest")


def _manifest(name: str, epochs: int) -> dict[str, Any]:
    """The quickstart 2-node manifest under another name, with more epochs for drills."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["training"]["epochs"] = epochs
    return dict(doc)


def _status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl.get(f"trainingrun/{name}", "-n", ns).get("status") or {})


def _wait(kubectl: Kubectl, condition: str, ns: str, name: str, total: float = 900) -> None:
    """`kubectl wait` on the run, in rounds that fit the helper's subprocess timeout."""
    deadline = time.monotonic() + total
    while True:
        result = kubectl.run(
            "wait", f"--for={condition}", f"trainingrun/{name}", "-n", ns, "--timeout=150s",
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return
        status = _status(kubectl, ns, name)
        assert status.get("phase") != "Failed", status
        assert time.monotonic() < deadline, f"no {condition} after {total:.0f}s: {status}"


def _until(what: str, check: Any, total: float = 600, every: float = 1.0) -> Any:
    deadline = time.monotonic() + total
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {total:.0f}s"
        time.sleep(every)


def _mlflow(stack: DevStack, path: str, **query: str) -> dict[str, Any]:
    url = f"{stack.env()['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}"
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _mlflow_latest(stack: DevStack, run_id: str) -> dict[str, float]:
    run = _mlflow(stack, "runs/get", run_id=run_id)["run"]
    return {m["key"]: float(m["value"]) for m in run["data"].get("metrics", [])}


def _store(stack: DevStack, uri: str) -> S3Store:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    env = stack.env()
    client = s3_client_from_env(env)
    return S3Store(bucket, prefix, client)


def _pods(kubectl: Kubectl, ns: str, name: str, attempt: int) -> list[dict[str, Any]]:
    selector = f"tradewind.dev/run={name},tradewind.dev/attempt={attempt},tradewind.dev/role=train"
    return list(kubectl.get("pods", "-n", ns, "-l", selector)["items"])


def _index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def _pod_log(stack: DevStack, ns: str, pod: str) -> str:
    return str(Kubectl(stack).run("logs", "-n", ns, pod).stdout)


def _kill_container(stack: DevStack, pod: dict[str, Any]) -> None:
    """SIGKILL the container's first process (PID 1 of its PID namespace: torchrun), as the
    kernel's OOM killer or a crash would end it; everything in its namespace dies with it."""
    os.kill(container_init_pid(pod), signal.SIGKILL)


def _on_the_real_node(stack: DevStack, pods: list[dict[str, Any]]) -> bool:
    plan = real_node.load_plan(stack)
    assert plan is not None
    return all(p["spec"].get("nodeName") in (None, plan.node_name) for p in pods)


# --- tests ---------------------------------------------------------------------------


def test_two_node_training_run_end_to_end(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    """The quickstart 2-node manifest, as is: rendezvous across two network namespaces,
    checkpoints in MinIO, metrics in MLflow, status Succeeded with the final metrics; while it
    runs, status progress and metrics follow MLflow within 30 s."""
    _enforce_restricted(xkubectl, ns)
    xkubectl.run("apply", "-n", ns, "-f", str(QUICKSTART))
    name = "quickstart-2node"
    _wait(xkubectl, "condition=Running", ns, name)

    # Sample status and MLflow while the run goes: every epoch MLflow shows must reach the
    # status within 30 s (the operator polls every 2 s here).
    mlflow_seen: list[tuple[float, float]] = []  # (time, epoch) as MLflow has it
    status_seen: list[tuple[float, float]] = []
    while True:
        status = _status(xkubectl, ns, name)
        t = time.monotonic()
        status_seen.append((t, float((status.get("metrics") or {}).get("epoch", 0))))
        run_id = (status.get("mlflow") or {}).get("runId")
        if run_id:
            mlflow_seen.append((t, _mlflow_latest(xstack, run_id).get("epoch", 0.0)))
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() - status_seen[0][0] < 900, status
        time.sleep(2)
    end = status_seen[-1][0]
    for t, epoch in mlflow_seen:
        caught_up = [ts for ts, e in status_seen if ts >= t and e >= epoch]
        assert caught_up, (t, epoch, status_seen)
        assert caught_up[0] - t <= 30 or end - t <= 30, (t, epoch, caught_up[0])
    _wait(xkubectl, "condition=Succeeded", ns, name, total=60)

    status = _status(xkubectl, ns, name)
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0
    assert status["progress"]["percent"] == 100 and status["progress"]["epoch"] == 3
    # finished: the headline is the test backtest's Sharpe with its 95% interval and PSR
    assert re.fullmatch(
        r"sharpe=-?[\d.]+ \[-?[\d.]+, -?[\d.]+\] psr=[\d.]+", status["headlineMetric"]
    ), status["headlineMetric"]

    # Two pods, each with its own address in the node's pod CIDR.
    pods = sorted(_pods(xkubectl, ns, name, 0), key=_index)
    assert [_index(p) for p in pods] == [0, 1]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    assert _on_the_real_node(xstack, pods)
    ips = [p["status"]["podIP"] for p in pods]
    plan = real_node.load_plan(xstack)
    assert plan is not None
    network = ipaddress.ip_network(plan.pod_cidr)
    assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in network for ip in ips)
    terminated = [p["status"]["containerStatuses"][0]["state"]["terminated"] for p in pods]
    assert [t["exitCode"] for t in terminated] == [0, 0]
    # Both ranks trained (DDP all-reduces every step, so neither finishes alone).
    for pod in pods:
        assert "samples: train" in _pod_log(xstack, ns, pod["metadata"]["name"])

    # Checkpoints in MinIO: latest is the last epoch, complete (its sha256 verifies on load).
    latest = status["checkpoint"]["latest"]
    uid = xkubectl.get(f"trainingrun/{name}", "-n", ns)["metadata"]["uid"]
    assert latest.startswith(f"s3://tradewind/{ns}/{name}/{uid}/step-")  # the run's own prefix
    checkpointer = Checkpointer(_store(xstack, latest.rsplit("/", 1)[0]))
    assert checkpointer.latest_step == 3
    assert checkpointer.load_latest() is not None

    # Metrics in MLflow: the status' final metrics are the MLflow run's.
    run_id = status["mlflow"]["runId"]
    run = _mlflow(xstack, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = _mlflow_latest(xstack, run_id)
    assert metrics["epoch"] == 3.0
    assert status["mlflow"]["url"].endswith(run_id)
    _until(  # read once more after it ended: the polls stop at Succeeded
        f"status.metrics.val_loss {metrics['val_loss']} (MLflow's last)",
        lambda: (
            (_status(xkubectl, ns, name).get("metrics") or {}).get("val_loss")
            == pytest.approx(metrics["val_loss"])
        ),
        total=60,
    )


def _interval(pod: dict[str, Any]) -> tuple[str, str]:
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return terminated["startedAt"], terminated["finishedAt"]


def test_an_rlrun_ensemble_trains_its_agents_in_parallel_pods_and_combines_them(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    _enforce_restricted(xkubectl, ns)
    name = "rl-ensemble"
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": {"name": name},
        "spec": {
            "environment": {
                "data": {"source": "stocks", "symbols": ["AAPL", "MSFT"]},
                "actionSpace": "continuous",
                "episodeLength": 64,
                "maxPositionSize": 0.5,
            },
            "agents": [
                {"name": "ppo", "algorithm": "ppo",
                 "hyperparameters": {"n_steps": 64, "batch_size": 32, "net_arch": [16]}},
                {"name": "a2c", "algorithm": "a2c", "hyperparameters": {"net_arch": [16]}},
            ],
            "ensemble": {"method": "weighted_average"},
            "totalTimesteps": 512,
            "nEnvs": 2,
            "eval": {"freq": 256, "episodes": 1},
        },
    }  # fmt: skip
    xkubectl.apply(run, "-n", ns)
    deadline = time.monotonic() + 900
    while True:
        result = xkubectl.run(
            "wait", "--for=condition=Succeeded", f"rlrun/{name}", "-n", ns, "--timeout=150s",
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            break
        status = xkubectl.get(f"rlrun/{name}", "-n", ns).get("status") or {}
        assert status.get("phase") != "Failed" and time.monotonic() < deadline, status
    status = xkubectl.get(f"rlrun/{name}", "-n", ns)["status"]
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0

    pods = xkubectl.get("pods", "-n", ns, "-l", f"tradewind.dev/run={name}")["items"]
    roles = {p["metadata"]["labels"]["tradewind.dev/role"] for p in pods}
    assert roles == {"train", "combine"}
    train = sorted((p for p in pods if p["metadata"]["labels"]["tradewind.dev/role"] == "train"),
                   key=_index)  # fmt: skip
    (combine,) = [p for p in pods if p["metadata"]["labels"]["tradewind.dev/role"] == "combine"]
    assert [_index(p) for p in train] == [0, 1]
    assert all(p["status"]["phase"] == "Succeeded" for p in [*train, combine])
    assert train[0]["status"]["podIP"] != train[1]["status"]["podIP"]
    (s0, f0), (s1, f1) = _interval(train[0]), _interval(train[1])
    assert max(s0, s1) <= min(f0, f1)  # the two agents trained at the same time
    assert _interval(combine)[0] >= max(f0, f1)  # then the combine step
    # Each agent's checkpoints are in MinIO.
    uid = xkubectl.get(f"rlrun/{name}", "-n", ns)["metadata"]["uid"]
    store = _store(xstack, f"s3://tradewind/{ns}/{name}/{uid}")
    keys = store.list("")
    for agent in ("ppo", "a2c"):
        assert any(k.startswith(f"agents/{agent}/") for k in keys), keys


def test_a_sweep_of_four_trials_two_at_a_time_runs_on_executing_pods(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    """4 trials, parallelism 2, median pruning from the val_loss the trainers log."""
    _enforce_restricted(xkubectl, ns)
    name = "xsweep"
    template = tiny_spec(epochs=4, deterministic=False)
    sweep = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": template},
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {
                "training.optimizer.learningRate": {
                    "type": "loguniform", "low": 1.0e-7, "high": 1.0e-1,
                },
            },
            "sampler": "random",
            "pruner": {"type": "median", "startupTrials": 1, "warmupSteps": 0},
            "maxTrials": 4,
            "parallelism": 2,
        },
    }  # fmt: skip
    xkubectl.apply(sweep, "-n", ns)
    most_active, children_seen = 0, set()
    deadline = time.monotonic() + 1200
    while True:
        status = xkubectl.get(f"sweep/{name}", "-n", ns).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, status
        children = xkubectl.get("trainingruns", "-n", ns)["items"]
        children_seen |= {c["metadata"]["name"] for c in children}
        active = [
            c for c in children
            if (c.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not c["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        most_active = max(most_active, len(active))
        pods = xkubectl.get("pods", "-n", ns)["items"]
        assert _on_the_real_node(xstack, pods)
        time.sleep(2)
    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert trials["completed"] + trials["pruned"] == 4 and trials["failed"] == 0, trials
    assert trials["pruned"] >= 1, trials
    assert 1 <= most_active <= 2 and len(children_seen) == 4
    assert status["bestValue"] > 0 and status["bestTrial"]["name"].startswith(f"{name}-")
