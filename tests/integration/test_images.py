"""The install path, for real: `hack/build-images.sh` makes the Dockerfile's Debian base from
Debian's packages; the README's three install commands run as written (only the registry
address is this stack's):

1. the build-and-push loop builds both Dockerfile targets offline and pushes them to the dev
   stack's registry, which asks for a login; the real node's kubelet pulls with a pull
   secret (as uid 10001 under PodSecurity `restricted`), and without it the registry refuses
   the pull and the pod says so;
2. `helm install` brings the operator, MinIO and MLflow (their images built the same way) up
   on that node;
3. `kubectl apply` + `kubectl wait`: the 2-node quickstart trains in containers (torchrun's
   rendezvous through the cluster's DNS) and Succeeds, its checkpoint in the chart's MinIO
   and its run in the chart's MLflow.
"""

from __future__ import annotations

import base64
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
from tests.integration.test_real_node import (
    UID,
    container_init_pid,
    restricted_pod,
    wait_succeeded,
)
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.node_config import NODE_LABEL
from tradewind.devstack.registry import Registry, docker_login
from tradewind.devstack.stack import cache_dir
from tradewind.trainer.checkpoint import Checkpointer
from tradewind.trainer.storage import S3Store, s3_client_from_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "images-test"
PULL_SECRET = "regcred"
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff")
RELEASE = "tradewind"
"""The README's release namespace."""

if not (cache_dir() / "bin" / "current" / "kubelet").is_file():
    pytest.skip(
        "no kubelet in the binary cache: hack/build-binaries.sh kubernetes-node coredns",
        allow_module_level=True,
    )


def readme_command(start: str) -> str:
    """The README's install command that starts with `start` (one line of its three)."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"{re.escape(start)}.*$", text, re.MULTILINE)
    assert found, f"README.md has no line with `{start} ...`"
    return found.group(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    subprocess.run([str(ROOT / "hack" / "build-images.sh")], check=True, timeout=1800)
    config = StackConfig(
        dev_dir=tmp_path_factory.mktemp("images"),
        nodes=0,
        with_mlflow=False,
        real_node=True,
        registry=True,
    )
    with stack_of_its_own(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def registry(stack: DevStack) -> Iterator[Registry]:
    registry = stack.image_registry()
    yield registry
    # The tags naming this registry (its port is gone with it); the layers stay cached.
    tags = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{registry.address}/*/*"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if tags:
        subprocess.run(["docker", "rmi", *tags], capture_output=True, check=False)


@pytest.fixture(scope="module")
def kube(stack: DevStack, registry: Registry) -> Kubectl:
    kubectl = Kubectl(stack)
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": labels}}
    )
    kubectl.run(
        "create", "secret", "docker-registry", PULL_SECRET, "-n", NAMESPACE,
        f"--docker-server={registry.address}", f"--docker-username={registry.user}",
        f"--docker-password={registry.password}",
    )  # fmt: skip
    return kubectl


@pytest.fixture(scope="module")
def docker_config(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker config logged in to the stack's registry (the user's ~/.docker is left
    alone), with the CLI plugins (buildx, where build-images.sh links it)."""
    config = tmp_path_factory.mktemp("docker-config")
    plugins = Path.home() / ".docker" / "cli-plugins"
    if plugins.is_dir():
        (config / "cli-plugins").symlink_to(plugins)
    docker_login(registry, config_dir=config)
    return config


@pytest.fixture(scope="module")
def operator_image(registry: Registry, docker_config: Path) -> str:
    """The README's build-and-push loop: both targets (the trainer's push is most of it:
    3.4 GB compressed)."""
    command = readme_command("for t in operator trainer; do docker build")
    env = os.environ | {"REGISTRY": registry.prefix, "DOCKER_CONFIG": str(docker_config)}
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return f"{registry.prefix}/tradewind-operator:0.1.0"


def _image_pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    pod = restricted_pod(name, "", **spec)
    pod["metadata"]["namespace"] = NAMESPACE
    container = pod["spec"]["containers"][0]
    container.update(image=image, imagePullPolicy="Always")
    container["command"] = ["python", "-c", "import os, tradewind.cli; print(os.getuid())"]
    return pod


def test_the_readme_command_pushes_an_image_the_kubelet_pulls_with_the_pull_secret(
    kube: Kubectl, operator_image: str
) -> None:
    kube.apply(_image_pod("pulled", operator_image, imagePullSecrets=[{"name": PULL_SECRET}]))
    wait_succeeded(kube, "pulled", timeout=300, namespace=NAMESPACE)
    assert kube.run("logs", "-n", NAMESPACE, "pulled").stdout.split() == [str(UID)]
    status = kube.get("-n", NAMESPACE, "pod/pulled")["status"]["containerStatuses"][0]
    assert status["imageID"].startswith(operator_image.rsplit(":", 1)[0] + "@sha256:")


def test_without_the_pull_secret_the_registry_refuses_the_pull(
    kube: Kubectl, operator_image: str
) -> None:
    kube.apply(_image_pod("refused", operator_image))
    selector = "involvedObject.name=refused,reason=Failed"
    for _ in range(120):  # the kubelet's first pull, then its back-off
        events = kube.get("events", "-n", NAMESPACE, "--field-selector", selector)["items"]
        status = kube.get("-n", NAMESPACE, "pod/refused")["status"]
        waiting = [s["state"].get("waiting", {}) for s in status.get("containerStatuses", [])]
        if events and waiting and waiting[0].get("reason") in PULL_FAILURES:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"no pull failure reported: {json.dumps(status)}")
    messages = " ".join(e["message"] for e in events).lower()
    assert "401" in messages or "unauthorized" in messages, messages
    assert status["phase"] == "Pending"


def _readme_env(stack: DevStack, registry: Registry) -> dict[str, str]:
    return os.environ | {
        "REGISTRY": registry.prefix,
        "KUBECONFIG": str(stack.kubeconfig),
        "PATH": f"{stack.bin}:{os.environ['PATH']}",
    }


def _release_shown(kube: Kubectl) -> str:
    shown = kube.run(
        "get", "trainingruns,jobs,pods,pvc,events", "-n", RELEASE, "-o", "wide",
        "--sort-by=.metadata.creationTimestamp", check=False,
    )  # fmt: skip
    operator_log = kube.run(
        "logs", "-n", RELEASE, "deployment/tradewind", "--tail=150", check=False
    )
    return f"{shown.stdout}\n--- operator log ---\n{operator_log.stdout[-6000:]}"


@pytest.fixture(scope="module")
def release(
    stack: DevStack, registry: Registry, kube: Kubectl, docker_config: Path, operator_image: str
) -> str:
    """The README's `helm install` line (with the chart's bundled MinIO and MLflow, built the
    same way by `hack/build-images.sh --chart-images`, and the registry's pull secret), every
    Deployment Available."""
    env = os.environ | {"DOCKER_CONFIG": str(docker_config)}
    built = subprocess.run(
        [str(ROOT / "hack" / "build-images.sh"), "--chart-images", registry.prefix],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (flags,) = re.findall(r"helm flags: (.*)$", built.stderr, re.MULTILINE)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE}})
    kube.run(
        "create", "secret", "docker-registry", PULL_SECRET, "-n", RELEASE,
        f"--docker-server={registry.address}", f"--docker-username={registry.user}",
        f"--docker-password={registry.password}",
    )  # fmt: skip
    command = readme_command("helm install tradewind helm/tradewind")
    command += f" --set 'imagePullSecrets[0].name={PULL_SECRET}' {flags}"
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=_readme_env(stack, registry),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    waited = kube.run(
        "wait", "-n", RELEASE, "--for=condition=Available", "deployment", "--all",
        "--timeout=600s", check=False,
    )  # fmt: skip
    assert waited.returncode == 0, f"{waited.stderr}\n{_release_shown(kube)}"
    return RELEASE


def test_the_readme_helm_install_runs_the_operator_minio_and_mlflow_on_the_real_node(
    kube: Kubectl, release: str
) -> None:
    """Every Deployment Available on the real node; the operator holds its Lease through the
    `kubernetes` Service; the claims bind to the node's default StorageClass."""
    deployments = kube.get("deployments", "-n", release)["items"]
    assert len(deployments) == 3, [d["metadata"]["name"] for d in deployments]
    assert kube.get("lease/tradewind", "-n", release)["spec"].get("holderIdentity")
    claims = kube.get("pvc", "-n", release)["items"]
    assert claims and {c["status"]["phase"] for c in claims} == {"Bound"}


def _service_url(kube: Kubectl, namespace: str, url: str) -> str:
    """`url` (a Service's cluster DNS name) by the Service's cluster IP, which this host
    reaches through the real node's kube-proxy rules."""
    parts = urllib.parse.urlsplit(url)
    service = (parts.hostname or "").split(".")[0]
    ip = kube.get(f"service/{service}", "-n", namespace)["spec"]["clusterIP"]
    return parts._replace(netloc=f"{ip}:{parts.port or 80}").geturl()


def _checkpointer(kube: Kubectl, namespace: str, pod: dict[str, Any], uri: str) -> Checkpointer:
    """The checkpoints of `uri`'s folder, read with the credentials the pod had."""
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    secret = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"]
    keys = kube.get(f"secret/{secret}", "-n", namespace)["data"]
    store_env = {
        "AWS_ENDPOINT_URL": _service_url(kube, namespace, env["AWS_ENDPOINT_URL"]["value"]),
        **{
            k: base64.b64decode(keys[k]).decode()
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        },
    }
    bucket, _, prefix = uri.removeprefix("s3://").rsplit("/", 1)[0].partition("/")
    return Checkpointer(S3Store(bucket, prefix, s3_client_from_env(store_env)))


def test_the_readme_quickstart_trains_in_containers_and_succeeds(
    stack: DevStack, registry: Registry, kube: Kubectl, release: str
) -> None:
    """The README's third command as written: both ranks train in the trainer image as uid
    10001 on the real node, the run Succeeds, its checkpoint is in the chart's MinIO (read
    with the namespace's own credentials) and its metrics in the chart's MLflow."""
    command = readme_command("kubectl apply -n tradewind")
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=_readme_env(stack, registry),
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}\n{_release_shown(kube)}"
    name = re.search(r"trainingrun/(\S+)", command).group(1)  # type: ignore[union-attr]
    run = kube.get(f"trainingrun/{name}", "-n", release)
    status = run["status"]
    assert status["phase"] == "Succeeded", status

    pods = kube.get("pods", "-n", release, "-l", f"tradewind.dev/run={name}")["items"]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        node = kube.get(f"node/{pod['spec']['nodeName']}")
        assert node["metadata"]["labels"].get(NODE_LABEL) == "true"  # the real node
        container = pod["status"]["containerStatuses"][0]
        assert container["image"].startswith(f"{registry.prefix}/tradewind-trainer:")
        assert container["state"]["terminated"]["exitCode"] == 0
        logs = kube.run("logs", "-n", release, pod["metadata"]["name"]).stdout
        assert "samples: train" in logs, logs[-2000:]
    security = pods[0]["spec"]["securityContext"]
    assert security["runAsUser"] == UID and security["runAsNonRoot"] is True

    # The checkpoint, in the chart's MinIO, with the namespace's own credentials.
    latest = status["checkpoint"]["latest"]
    assert latest.startswith(f"s3://tradewind/{release}/{name}/{run['metadata']['uid']}/step-")
    checkpointer = _checkpointer(kube, release, pods[0], latest)
    assert checkpointer.latest_step == run["spec"]["training"]["epochs"]
    assert checkpointer.load_latest() is not None

    # The metrics, in the chart's MLflow: the status' final metrics are its run's.
    env = {e["name"]: e for e in pods[0]["spec"]["containers"][0]["env"]}
    tracking = env["MLFLOW_TRACKING_URI"]["value"]
    query = urllib.parse.urlencode({"run_id": status["mlflow"]["runId"]})
    request = urllib.request.Request(
        f"{_service_url(kube, release, tracking)}/api/2.0/mlflow/runs/get?{query}",
        # The Service's name: the chart's MLflow allows only its own host names.
        headers={"Host": urllib.parse.urlsplit(tracking).netloc},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        mlflow_run = json.loads(response.read())["run"]
    assert mlflow_run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: float(m["value"]) for m in mlflow_run["data"]["metrics"]}

    def final(metrics_now: dict[str, float]) -> bool:
        return metrics_now.get("val_loss") == pytest.approx(metrics["val_loss"])

    # The run's last metrics, read once more after it ended (the polls stop at Succeeded).
    _until(
        f"status.metrics.val_loss {metrics['val_loss']} (MLflow's last)",
        lambda: final(_run_status(kube, release, name).get("metrics") or {}),
        kube,
        total=60,
    )


# ---------------------------------------------------------------- failure drills, real node
# The retired executor's drills, on the real node with the chart's operator, MinIO and MLflow:
# the kubelet, containerd and runc decide what a killed or starved container reports.


def _drill_run(release: str, name: str, epochs: int, **spec: Any) -> dict[str, Any]:
    """The 2-node quickstart under another name, with more epochs."""
    doc = yaml.safe_load((ROOT / "examples" / "trainingrun-quickstart-2node.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": release}
    doc["spec"]["training"]["epochs"] = epochs
    doc["spec"].update(spec)
    return dict(doc)


def _run_status(kube: Kubectl, release: str, name: str) -> dict[str, Any]:
    return dict(kube.get(f"trainingrun/{name}", "-n", release).get("status") or {})


def _until(what: str, check: Any, kube: Kubectl, total: float = 600, every: float = 1) -> Any:
    deadline = time.monotonic() + total
    while not (value := check()):
        assert time.monotonic() < deadline, (
            f"{what}: not within {total:.0f}s\n{_release_shown(kube)}"
        )
        time.sleep(every)
    return value


def _finished(kube: Kubectl, release: str, name: str, total: float = 900) -> dict[str, Any]:
    return dict(
        _until(
            f"{name} finished",
            lambda: (
                (s := _run_status(kube, release, name)).get("phase") in ("Succeeded", "Failed")
                and s
            ),
            kube,
            total=total,
            every=3,
        )
    )


def _until_checkpoint(kube: Kubectl, release: str, name: str) -> str:
    """The run's first checkpoint URI in MinIO, once its status names one."""
    return str(
        _until(
            "a checkpoint in MinIO",
            lambda: (_run_status(kube, release, name).get("checkpoint") or {}).get("latest"),
            kube,
        )
    )


def _attempt_pods(kube: Kubectl, release: str, name: str, attempt: int) -> list[dict[str, Any]]:
    selector = f"tradewind.dev/run={name},tradewind.dev/attempt={attempt},tradewind.dev/role=train"
    pods = kube.get("pods", "-n", release, "-l", selector)["items"]
    return sorted(
        pods, key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
    )


def test_drill_a_killed_container_restarts_the_gang_from_the_checkpoint(
    kube: Kubectl, release: str
) -> None:
    """SIGKILL to one rank's container (as the OOM killer or a node problem would): the
    kubelet reports exit 137, the operator restarts the whole gang, and the new attempt's
    rank 0 resumes from the checkpoint the first left in MinIO."""
    name = "drill-kill"
    kube.apply(_drill_run(release, name, epochs=6))
    _until_checkpoint(kube, release, name)
    pods = _attempt_pods(kube, release, name, 0)
    os.kill(container_init_pid(pods[1]), signal.SIGKILL)

    def restarting() -> dict[str, Any] | None:
        status = _run_status(kube, release, name)
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        return conditions.get("Restarting") if status.get("restarts", 0) >= 1 else None

    # e.g. "pod drill-kill-0-1-x failed with exit code 137 (Error); starting attempt 1 from
    # the latest checkpoint (restart 1 of 3)"
    condition = _until("a restart", restarting, kube, every=0.5)
    assert "failed with exit code 137" in condition["message"], condition
    assert "starting attempt 1 from the latest checkpoint" in condition["message"], condition
    status = _finished(kube, release, name)
    shown = f"{status}\n{_release_shown(kube)}"
    assert status["phase"] == "Succeeded", shown
    assert status["restarts"] == 1 and status["attempt"] == 1, shown
    rank0 = _attempt_pods(kube, release, name, 1)[0]["metadata"]["name"]
    log = kube.run("logs", "-n", release, rank0).stdout
    resumed = re.search(r"resumed at epoch (\d+) \(step (\d+)\)", log)
    assert resumed and int(resumed.group(1)) >= 1, log[-3000:]
    assert status["progress"]["epoch"] == 6


def test_drill_a_run_over_its_memory_limit_fails_at_once_as_oomkilled(
    kube: Kubectl, release: str
) -> None:
    """The trainer in 160 MiB: the kernel kills it at its cgroup limit, the kubelet reports
    OOMKilled, and the operator fails the run without a restart (it would run out again)."""
    name = "drill-oom"
    kube.apply(
        _drill_run(release, name, epochs=1, nodes=1, maxRestarts=3,
                   resources={"limits": {"memory": "160Mi"}})
    )  # fmt: skip
    status = _finished(kube, release, name, total=300)
    failed = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert status["phase"] == "Failed" and status["restarts"] == 0, status
    assert failed[0]["reason"] == "OutOfMemory", failed
    assert "exit code 137 (OOMKilled)" in failed[0]["message"], failed


def test_drill_minio_down_for_20s_mid_training(kube: Kubectl, release: str) -> None:
    """The chart's MinIO scaled to zero for 20 s mid-training: training goes on, checkpoints
    are retried, and the run Succeeds without a restart with its last epoch's checkpoint."""
    name = "drill-minio"
    kube.apply(_drill_run(release, name, epochs=6))
    _until_checkpoint(kube, release, name)
    minio = "deployment/tradewind-minio"
    kube.run("scale", "-n", release, minio, "--replicas=0")
    kube.run("wait", "-n", release, "--for=delete", "pod", "-l", "app.kubernetes.io/name=minio",
             "--timeout=60s", check=False)  # fmt: skip
    epoch_at_stop = (_run_status(kube, release, name).get("progress") or {}).get("epoch", 0)
    time.sleep(20)
    kube.run("scale", "-n", release, minio, "--replicas=1")
    kube.run("rollout", "status", "-n", release, minio, "--timeout=300s")
    status = _finished(kube, release, name)
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0, status
    assert status["progress"]["epoch"] == 6
    pods = _attempt_pods(kube, release, name, 0)
    checkpointer = _checkpointer(kube, release, pods[0], status["checkpoint"]["latest"])
    assert checkpointer.latest_step == 6 and checkpointer.load_latest() is not None
    if epoch_at_stop < 6:
        log = kube.run("logs", "-n", release, pods[0]["metadata"]["name"]).stdout
        # A save met the outage: the trainer retried it, or MinIO's client did (urllib3's
        # "Retrying ...": when the outage ends within its retries, the trainer sees none).
        assert "retrying" in log.lower() or "not saved" in log, log[-3000:]


def test_drill_the_operator_killed_mid_attempt_catches_up(kube: Kubectl, release: str) -> None:
    """SIGKILL to the operator's container: the kubelet restarts it, the new process takes the
    Lease back, and the run it left mid-attempt Succeeds with nothing created twice."""
    name = "drill-operator"
    kube.apply(_drill_run(release, name, epochs=4))
    _until("both pods ready", lambda: _run_status(kube, release, name).get("nodesReady") == 2, kube)
    (operator,) = kube.get(
        "pods", "-n", release, "-l", "app.kubernetes.io/name=tradewind-operator"
    )["items"]
    os.kill(container_init_pid(operator), signal.SIGKILL)
    _until(
        "the operator restarted by the kubelet",
        lambda: (
            kube.get(f"pod/{operator['metadata']['name']}", "-n", release)["status"][
                "containerStatuses"
            ][0]["restartCount"]
            >= 1
        ),
        kube,
        total=120,
    )
    status = _finished(kube, release, name)
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0, status
    assert status["attempt"] == 0 and status["progress"]["epoch"] == 4
    jobs = kube.get("jobs", "-n", release, "-l", f"tradewind.dev/run={name}")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [f"{name}-0"]
