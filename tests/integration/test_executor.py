"""The whole loop with pods that really run: `kubectl apply` -> operator -> Indexed Job ->
pods on the executor node (tradewind.devstack.executor: a network namespace and address per
pod) running torchrun -> checkpoints in MinIO, metrics in MLflow -> status. Then the failure
drills: a killed pod process, MinIO down for 20 s, the operator SIGKILLed.

These tests start a stack of their own with the executor (it needs root) and no kwok nodes,
beside any shared stack.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
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
from tests.tiny import tiny_spec
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.executor_net import leftovers
from tradewind.devstack.executor_pod import CGROUP_ROOT
from tradewind.devstack.processes import pid_alive, stop
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.storage import S3Store, s3_client_from_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the executor needs root (netns, mounts)"),
]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "trainingrun-quickstart-2node.yaml"
SECRET = "minio-credentials"


@pytest.fixture(scope="module")
def xstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    config = StackConfig(dev_dir=tmp_path_factory.mktemp("xstack"), nodes=0, executor=True)
    with stack_of_its_own(config) as stack:
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
    op.env |= xstack.pod_endpoints()  # pods reach MinIO and MLflow through the bridge
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
    train with its read-only root (the executor applies readOnlyRootFilesystem)."""
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
    (folder,) = (stack.dir / "executor" / "pods" / ns).glob(f"{pod}-*")
    return (folder / "trainer.log").read_text(errors="replace")


def _kill_container(stack: DevStack, pod: dict[str, Any]) -> None:
    """SIGKILL the container's first process (PID 1 of its PID namespace: torchrun), as the
    kernel's OOM killer or a crash would end it; everything in its namespace dies with it."""
    prefix = stack.state["executor"]["prefix"]
    host = int(pod["status"]["podIP"].rsplit(".", 1)[1])
    assert Path(f"/run/netns/{prefix}-p{host}").exists(), pod["metadata"]["name"]
    out = subprocess.run(
        ["ip", "netns", "pids", f"{prefix}-p{host}"], capture_output=True, text=True, check=True
    ).stdout
    for pid in out.split():
        status = Path(f"/proc/{pid}/status").read_text()
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid"))
        if nspid[-1] == "1":
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError(f"no PID 1 in the netns of {pod['metadata']['name']}: {out}")


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

    # Two pods, each in its own network namespace with its own address in the pod CIDR.
    pods = sorted(_pods(xkubectl, ns, name, 0), key=_index)
    assert [_index(p) for p in pods] == [0, 1]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    assert all(p["spec"]["nodeName"] == "executor-0" for p in pods)
    ips = [p["status"]["podIP"] for p in pods]
    cidr = xstack.state["executor"]["cidr"]
    assert len(set(ips)) == 2 and all(ip.startswith(cidr.rsplit(".", 1)[0] + ".") for ip in ips)
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
    assert status["metrics"]["val_loss"] == pytest.approx(metrics["val_loss"])
    assert status["mlflow"]["url"].endswith(run_id)


def test_a_killed_pod_process_restarts_the_gang_from_the_minio_checkpoint(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    name = "drill-kill"
    xkubectl.apply(_manifest(name, epochs=6), "-n", ns)
    _until(
        "a checkpoint in MinIO",
        lambda: (_status(xkubectl, ns, name).get("checkpoint") or {}).get("latest"),
    )
    pods = sorted(_pods(xkubectl, ns, name, 0), key=_index)
    _kill_container(xstack, pods[1])

    def restarting() -> dict[str, Any] | None:
        status = _status(xkubectl, ns, name)
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        return conditions.get("Restarting") if status.get("restarts", 0) >= 1 else None

    condition = _until("a restart", restarting, every=0.5)
    # e.g. "pod drill-kill-0-1-x failed with exit code 137 (Error); starting attempt 1 from
    # the latest checkpoint (restart 1 of 3)"
    assert "failed with exit code" in condition["message"], condition
    assert "starting attempt 1 from the latest checkpoint" in condition["message"], condition
    _wait(xkubectl, "condition=Succeeded", ns, name)
    status = _status(xkubectl, ns, name)
    assert status["restarts"] == 1 and status["attempt"] == 1

    # The new attempt's rank 0 resumed from the checkpoint attempt 0 left in MinIO.
    (rank0,) = [p for p in _pods(xkubectl, ns, name, 1) if _index(p) == 0]
    resumed = re.search(
        r"resumed at epoch (\d+) \(step (\d+)\)", _pod_log(xstack, ns, rank0["metadata"]["name"])
    )
    assert resumed is not None
    assert int(resumed.group(2)) > 0 and int(resumed.group(1)) >= 1
    assert status["progress"]["epoch"] == 6


def test_minio_down_for_20s_mid_training(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    """Training goes on, the checkpoint is retried, latest.json only ever names complete
    checkpoints, and no restart was needed."""
    name = "drill-minio"
    xkubectl.apply(_manifest(name, epochs=6), "-n", ns)
    first = _until(
        "a checkpoint in MinIO",
        lambda: (_status(xkubectl, ns, name).get("checkpoint") or {}).get("latest"),
    )
    pid = xstack.state["pids"]["minio"]
    stop(pid)
    assert not pid_alive(pid)
    epoch_at_stop = (_status(xkubectl, ns, name).get("progress") or {}).get("epoch", 0)
    time.sleep(20)
    xstack.up(log=lambda _: None)  # MinIO again, on its port, with its data
    assert xstack.state["pids"]["minio"] != pid

    checkpointer = Checkpointer(_store(xstack, first.rsplit("/", 1)[0]))
    seen_steps = []
    while _status(xkubectl, ns, name).get("phase") not in ("Succeeded", "Failed"):
        step = checkpointer.latest_step
        if step is not None:
            seen_steps.append(step)
            assert checkpointer.load_latest() is not None  # complete: the sha256 verifies
        time.sleep(3)
    _wait(xkubectl, "condition=Succeeded", ns, name, total=60)
    status = _status(xkubectl, ns, name)
    assert status.get("restarts", 0) == 0
    assert status["progress"]["epoch"] == 6 and checkpointer.latest_step == 6
    assert checkpointer.load_latest() is not None
    assert seen_steps == sorted(seen_steps)
    (rank0,) = [p for p in _pods(xkubectl, ns, name, 0) if _index(p) == 0]
    text = _pod_log(xstack, ns, rank0["metadata"]["name"])
    if epoch_at_stop < 6:
        # An epoch ended while MinIO was down: its checkpoint failed and was retried.
        assert "retrying" in text or "not saved" in text, text[-3000:]


def test_the_operator_sigkilled_during_an_attempt_catches_up(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    name = "drill-operator"
    xkubectl.apply(_manifest(name, epochs=4), "-n", ns)
    _until(
        "both pods running",
        lambda: _status(xkubectl, ns, name).get("nodesReady") == 2,
    )
    xoperator.kill()
    epoch_at_kill = (_status(xkubectl, ns, name).get("metrics") or {}).get("epoch", 0)
    run_id = (_status(xkubectl, ns, name).get("mlflow") or {}).get("runId")
    time.sleep(20)  # the run goes on without the operator
    pods = _pods(xkubectl, ns, name, 0)
    assert len(pods) == 2
    xoperator.start()
    _wait(xkubectl, "condition=Succeeded", ns, name)
    status = _status(xkubectl, ns, name)
    assert status.get("restarts", 0) == 0 and status["attempt"] == 0
    assert status["progress"]["epoch"] == 4 and status["metrics"]["epoch"] == 4
    assert status["metrics"]["epoch"] > epoch_at_kill or epoch_at_kill == 4
    jobs = xkubectl.get("jobs", "-n", ns, "-l", f"tradewind.dev/run={name}")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [f"{name}-0"]  # nothing created twice
    if run_id:
        assert _mlflow_latest(xstack, run_id)["epoch"] == 4.0


def test_a_container_over_its_memory_limit_is_oomkilled(
    xstack: DevStack, xkubectl: Kubectl, ns: str
) -> None:
    """The memory limit is a cgroup limit; the kernel's kill is reported as a kubelet would:
    exit code 137, reason OOMKilled."""
    hog = "x = bytearray(512 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); print('no')"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hog"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "trainer",
                    "image": "tradewind-trainer:test",
                    "command": ["python", "-c", hog],
                    "resources": {"limits": {"memory": "128Mi"}},
                }
            ],
        },
    }
    xkubectl.apply(pod, "-n", ns)
    xkubectl.wait("--for=jsonpath={.status.phase}=Failed", "pod/hog", "-n", ns, timeout=120)
    state = xkubectl.get("pod/hog", "-n", ns)["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["reason"] == "OOMKilled"
    assert state["terminated"]["exitCode"] == 137


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
        assert all(p["spec"].get("nodeName") in (None, "executor-0") for p in pods)
        time.sleep(2)
    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert trials["completed"] + trials["pruned"] == 4 and trials["failed"] == 0, trials
    assert trials["pruned"] >= 1, trials
    assert 1 <= most_active <= 2 and len(children_seen) == 4
    assert status["bestValue"] > 0 and status["bestTrial"]["name"].startswith(f"{name}-")


def test_down_removes_the_pod_network(xstack: DevStack, xkubectl: Kubectl) -> None:
    """Last: stopping the stack leaves no netns, veth, bridge or cgroup of the executor."""
    prefix = xstack.state["executor"]["prefix"]
    assert any(n.endswith("br") for n in leftovers(prefix))  # the bridge, while it runs
    xstack.down(log=lambda _: None)
    assert leftovers(prefix) == []
    assert not (CGROUP_ROOT / f"tradewind-{prefix}").exists()
