"""The images, for real: `hack/build-images.sh` makes the Dockerfile's Debian base from
Debian's packages; the README's install command builds the operator image from the Dockerfile
offline and pushes it to the dev stack's registry, which asks for a login; the real node's
kubelet pulls it with a pull secret and runs it as uid 10001 under PodSecurity `restricted`;
without the secret the registry refuses the pull and the pod says so.

The README's loop runs as written except for the registry address and its target list: the
trainer target is the same command, not built here (6.7 GB: ~6 min to build and ~4.5 min to
push cold on 2 cores, seconds once cached; see docs/images.md).
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

from tests.integration.conftest import Kubectl
from tests.integration.test_real_node import UID, restricted_pod, wait_succeeded
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.registry import Registry, docker_login
from tradewind.devstack.stack import cache_dir

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "images-test"
PULL_SECRET = "regcred"
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff")

if not (cache_dir() / "bin" / "current" / "kubelet").is_file():
    pytest.skip(
        "no kubelet in the binary cache: hack/build-binaries.sh kubernetes-node coredns",
        allow_module_level=True,
    )


def readme_build_and_push() -> str:
    """The README's command that builds and pushes the images (one line of its install)."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"for t in operator trainer; do docker build .*$", text, re.MULTILINE)
    assert found, "README.md has no `for t in operator trainer; do docker build ...` line"
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
    stack = DevStack(config)
    try:
        stack.up(log=lambda _: None)
        yield stack
    finally:
        stack.destroy()


@pytest.fixture(scope="module")
def registry(stack: DevStack) -> Registry:
    return stack.image_registry()


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
def operator_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The README's build-and-push loop, for the operator target, logged in to the stack's
    registry in a docker config of its own (the user's ~/.docker is left alone)."""
    config = tmp_path_factory.mktemp("docker-config")
    plugins = Path.home() / ".docker" / "cli-plugins"  # buildx, where build-images.sh links it
    if plugins.is_dir():
        (config / "cli-plugins").symlink_to(plugins)
    docker_login(registry, config_dir=config)
    command = readme_build_and_push().replace("for t in operator trainer;", "for t in operator;")
    env = os.environ | {"REGISTRY": registry.prefix, "DOCKER_CONFIG": str(config)}
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
