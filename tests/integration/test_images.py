"""The images, for real: `hack/build-images.sh` makes the Dockerfile's Debian base from
Debian's packages; the README's install command builds the operator image from the Dockerfile
offline and pushes it to the dev stack's registry, which asks for a login; the real node's
kubelet pulls it with a pull secret and runs it as uid 10001 under PodSecurity `restricted`;
without the secret the registry refuses the pull and the pod says so. The README's `helm
install` line then brings the operator, MinIO and MLflow (their images built the same way) up
on that node.

The README's loop runs as written except for the registry address and its target list: the
trainer target is the same command, not built here (6.7 GB: ~6 min to build and ~4.5 min to
push cold on 2 cores, and ~14 GB of disk once pushed and pulled; see docs/images.md). So the
third command, the quickstart trained in containers, is not run here yet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl, stack_of_its_own
from tests.integration.test_real_node import UID, restricted_pod, wait_succeeded
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.registry import Registry, docker_login
from tradewind.devstack.stack import cache_dir

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
    """The README's build-and-push loop, for the operator target."""
    command = readme_command("for t in operator trainer; do docker build")
    command = command.replace("for t in operator trainer;", "for t in operator;")
    env = os.environ | {"REGISTRY": registry.prefix, "DOCKER_CONFIG": str(docker_config)}
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
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


def test_the_readme_helm_install_runs_the_operator_minio_and_mlflow_on_the_real_node(
    stack: DevStack, registry: Registry, kube: Kubectl, docker_config: Path, operator_image: str
) -> None:
    """The README's `helm install` line (with the chart's bundled MinIO and MLflow, built the
    same way by `hack/build-images.sh --chart-images`, and the registry's pull secret): every
    Deployment becomes Available on the real node; the operator holds its Lease through the
    `kubernetes` Service; the claims bind to the node's default StorageClass."""
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
    env = os.environ | {
        "REGISTRY": registry.prefix,
        "KUBECONFIG": str(stack.kubeconfig),
        "PATH": f"{stack.bin}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    waited = kube.run(
        "wait", "-n", RELEASE, "--for=condition=Available", "deployment", "--all",
        "--timeout=600s", check=False,
    )  # fmt: skip
    if waited.returncode != 0:
        shown = kube.run("get", "pods,pvc,events", "-n", RELEASE, "-o", "wide", check=False)
        raise AssertionError(f"{waited.stderr}\n{shown.stdout}")
    deployments = kube.get("deployments", "-n", RELEASE)["items"]
    assert len(deployments) == 3, [d["metadata"]["name"] for d in deployments]
    assert kube.get("lease/tradewind", "-n", RELEASE)["spec"].get("holderIdentity")
    claims = kube.get("pvc", "-n", RELEASE)["items"]
    assert claims and {c["status"]["phase"] for c in claims} == {"Bound"}
