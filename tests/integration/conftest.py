"""Fixtures on the real local stack (tradewind.devstack): kube-apiserver with kwok GPU nodes,
MinIO and MLflow on 127.0.0.1.

The session reuses a stack that `tradewind dev up` started in $TRADEWIND_DEV_DIR (as .ci/run
does); otherwise it starts its own in a temporary folder and removes it at the end. Tests
only ever talk to that stack's kubeconfig, never to $KUBECONFIG.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack, StackConfig

pytestmark = pytest.mark.integration


class Kubectl:
    """kubectl bound to the test stack's kubeconfig."""

    def __init__(self, stack: DevStack) -> None:
        self.binary = str(stack.bin / "kubectl")
        self.kubeconfig = str(stack.kubeconfig)
        # Discovery cached per stack, never shared with another cluster on a reused port.
        self.cache_dir = str(stack.dir / "kubectl-cache")

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache_dir, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, manifest: dict[str, Any] | str, *args: str) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-f", "-", *args, stdin=text).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def wait(self, *args: str, timeout: int = 90) -> None:
        """Block on a watch until the condition holds (`kubectl wait`), not on a sleep."""
        self.run("wait", *args, f"--timeout={timeout}s")


def _running_stack() -> DevStack | None:
    directory = os.environ.get("TRADEWIND_DEV_DIR")
    if not directory:
        return None
    stack = DevStack(StackConfig(dev_dir=Path(directory)))
    return stack if set(stack.status().values()) == {"running"} else None


@contextmanager
def stack_of_its_own(config: StackConfig) -> Iterator[DevStack]:
    """A stack up for the block, then stopped and its folder removed."""
    stack = DevStack(config)
    try:
        stack.up(log=lambda _: None)
        yield stack
    finally:
        stack.destroy()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    existing = _running_stack()
    if existing is not None:
        yield existing
        return
    with stack_of_its_own(StackConfig(dev_dir=tmp_path_factory.mktemp("devstack"), nodes=3)) as own:
        yield own


@pytest.fixture(scope="session")
def kubectl(stack: DevStack) -> Kubectl:
    return Kubectl(stack)


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl, repo_root: Path) -> None:
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(repo_root / "crds"))
    kubectl.wait("--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=tradewind")
    # The OpenAPI schema (`kubectl explain`) is published a moment after Established, and no
    # condition says when: poll for it, bounded.
    deadline = time.monotonic() + 60
    while kubectl.run("explain", "trainingrun.spec", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the CRDs' OpenAPI schema was not published in 60 s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def operator(
    stack: DevStack, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`tradewind operator` (all namespaces) against the stack, one per test module."""
    op = OperatorProcess(stack, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


CALL_FAILED = pytest.StashKey[bool]()
"""Whether the test body failed: the namespace fixture then prints what the cluster shows."""
DIAGNOSTIC_KINDS = "trainingruns,rlruns,sweeps,jobs,pods,events"


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    kubectl.wait("--for=create", "serviceaccount/default", "-n", name)
    yield name
    if request.node.stash.get(CALL_FAILED, False):
        _print_diagnostics(kubectl, request, name)
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def _print_diagnostics(kubectl: Kubectl, request: pytest.FixtureRequest, namespace: str) -> None:
    """A failed test's namespace as the cluster shows it (runs with status, Jobs, pods,
    Events) and the operator's log lines about it: shown with the failure report."""
    shown = kubectl.run("get", DIAGNOSTIC_KINDS, "-n", namespace, "-o", "yaml", check=False)
    print(f"--- {namespace} at the failure ---\n{shown.stdout}{shown.stderr}")
    if "operator" in request.fixturenames:
        log = request.getfixturevalue("operator").log
        lines = [line for line in log.read_text(errors="replace").splitlines() if namespace in line]
        print(f"--- {log}: {len(lines)} line(s) on {namespace} ---")
        print("\n".join(lines[-200:]))
