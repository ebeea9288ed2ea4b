"""Tradewind under the real Kueue controller (`tradewind dev up --kueue`: sigs.k8s.io/kueue
built by hack/build-binaries.sh, out of cluster against the dev stack): a ClusterQueue with
quota for 2 GPUs and runs of 2 GPUs each. One runs, the next waits saying so, and starts when
the first finishes; a restart's new Job queues again rather than bypassing the quota."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack import kueue as devstack_kueue
from tradewind.devstack.kwok import FAIL_EXIT_CODE, FAIL_LABEL, FAIL_REASON, HOLD_LABEL

pytestmark = pytest.mark.integration
KUEUE_API = "kueue.x-k8s.io/v1beta2"
QUEUE = "gpu-queue"


@pytest.fixture(scope="module")
def kueue(stack: DevStack) -> Iterator[DevStack]:
    """Kueue on the session's stack, started as `tradewind dev up --kueue` starts it (and
    stopped again unless it was already running)."""
    started_here = devstack_kueue.NAME not in stack.state
    with_kueue = DevStack(StackConfig(dev_dir=stack.dir, kueue=True))
    with_kueue.up(log=lambda _: None)
    assert with_kueue.status()[devstack_kueue.NAME] == "running"
    yield with_kueue
    if started_here:
        devstack_kueue.stop_kueue(with_kueue)


@pytest.fixture
def gpu_quota(kubectl: Kubectl, kueue: DevStack, namespace: str) -> Iterator[str]:
    """A ResourceFlavor, a ClusterQueue with 2 GPUs (and ample CPU and memory) and the
    LocalQueue `gpu-queue` in `namespace`."""
    name = f"gpus-{namespace}"
    resources = [("cpu", "64"), ("memory", "256Gi"), ("nvidia.com/gpu", "2")]
    objects: list[dict[str, Any]] = [
        {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}},
        {
            "apiVersion": KUEUE_API,
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": [r for r, _ in resources],
                        "flavors": [
                            {
                                "name": name,
                                "resources": [{"name": r, "nominalQuota": q} for r, q in resources],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": KUEUE_API,
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": namespace},
            "spec": {"clusterQueue": name},
        },
    ]
    kubectl.apply({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl.wait("--for=condition=Active", f"clusterqueue/{name}")
    kubectl.wait("--for=condition=Active", f"localqueue/{QUEUE}", "-n", namespace)
    yield name
    # Runs, then their Workloads (Kueue removes its finalizers from them while it runs).
    kubectl.run("delete", "trainingruns", "--all", "-n", namespace, "--cascade=foreground",
                "--timeout=60s", check=False)  # fmt: skip
    kubectl.run("wait", "--for=delete", "workloads", "--all", "-n", namespace, "--timeout=60s",
                check=False)  # fmt: skip
    for kind in ("clusterqueue", "resourceflavor"):
        kubectl.run("delete", kind, name, "--wait=false", check=False)


def _run(name: str) -> dict[str, Any]:
    """One node, 2 processes on 2 GPUs, queued in `gpu-queue`; its pods stay Running (kwok)
    until their hold label is removed."""
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
        "spec": {
            "nodes": 1,
            "procsPerNode": 2,
            "device": "cuda",
            "maxRestarts": 3,
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "podTemplate": {"labels": {HOLD_LABEL: "true"}},
        },
    }


def _status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl.get(f"trainingrun/{name}", "-n", ns).get("status", {}))


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _until(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """Poll `probe` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.5)
    return value


def _pods(kubectl: Kubectl, ns: str, run: str) -> list[dict[str, Any]]:
    return list(kubectl.get("pods", "-n", ns, "-l", f"tradewind.dev/run={run}")["items"])


def _waiting_for_quota(kubectl: Kubectl, ns: str, run: str, attempt: int) -> dict[str, Any]:
    """The run's status once it says Kueue holds its Job, with Kueue's own word."""

    def waiting() -> dict[str, Any] | None:
        status = _status(kubectl, ns, run)
        ready = _condition(status, "Ready")
        if ready.get("reason") == "WaitingForQuota" and "insufficient" in ready["message"]:
            return status
        return None

    status: dict[str, Any] = _until(f"{run} waiting for quota with Kueue's message", waiting)
    ready = _condition(status, "Ready")
    assert ready["status"] == "False"
    assert f"the Job of attempt {attempt} (LocalQueue {QUEUE})" in ready["message"]
    assert "nvidia.com/gpu" in ready["message"]  # Kueue's message names the resource
    admitted = _condition(status, "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "WaitingForQuota"
    job = kubectl.get(f"job/{run}-{attempt}", "-n", ns)
    assert job["spec"]["suspend"] is True  # still: the operator did not resume it
    # Created suspended and never resumed: the Job controller never made one of its pods.
    uid = job["metadata"]["uid"]
    assert not kubectl.get("pods", "-n", ns, "-l", f"batch.kubernetes.io/controller-uid={uid}")[
        "items"
    ]  # (pods of an earlier Job of the same name may still be going)
    selector = f"involvedObject.uid={uid},reason=SuccessfulCreate"
    assert not kubectl.get("events", "-n", ns, "--field-selector", selector)["items"]
    return status


def _finish(kubectl: Kubectl, ns: str, run: str) -> None:
    kubectl.run("label", "pods", "-n", ns, "-l", f"tradewind.dev/run={run}", f"{HOLD_LABEL}-")
    kubectl.wait("--for=condition=Succeeded", f"trainingrun/{run}", "-n", ns)


def test_runs_queue_for_gpu_quota_and_restarts_queue_again(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gpu_quota: str
) -> None:
    ns = namespace
    kubectl.apply(_run("first"), "-n", ns)
    kubectl.wait("--for=condition=Running", "trainingrun/first", "-n", ns)
    admitted = _condition(_status(kubectl, ns, "first"), "Admitted")
    assert admitted["status"] == "True" and f"LocalQueue {QUEUE}" in admitted["message"]
    workloads = kubectl.get("workloads", "-n", ns)["items"]
    assert [w["spec"]["queueName"] for w in workloads] == [QUEUE]

    # The second does not fit: Pending, saying it waits for Kueue and why.
    kubectl.apply(_run("second"), "-n", ns)
    status = _waiting_for_quota(kubectl, ns, "second", 0)
    assert status["phase"] == "Pending"
    events = kubectl.get("events", "-n", ns, "--field-selector", "involvedObject.name=second")
    assert "WaitingForQuota" in {e["reason"] for e in events["items"]}

    # The first finishes: its quota goes to the second.
    _finish(kubectl, ns, "first")
    kubectl.wait("--for=condition=Running", "trainingrun/second", "-n", ns)
    assert _condition(_status(kubectl, ns, "second"), "Admitted")["status"] == "True"

    # A third queues behind the second; then the second's pod fails. Its attempt 1 is a new
    # Job: created suspended, it queues behind the third, which takes the freed quota.
    kubectl.apply(_run("third"), "-n", ns)
    _waiting_for_quota(kubectl, ns, "third", 0)
    (pod,) = _pods(kubectl, ns, "second")
    kubectl.run("annotate", "pod", pod["metadata"]["name"], "-n", ns,
                f"{FAIL_EXIT_CODE}=1", f"{FAIL_REASON}=Error")  # fmt: skip
    kubectl.run("label", "pod", pod["metadata"]["name"], "-n", ns, f"{FAIL_LABEL}=true")
    kubectl.wait("--for=condition=Running", "trainingrun/third", "-n", ns)
    status = _waiting_for_quota(kubectl, ns, "second", 1)
    assert status["phase"] == "Restarting" and status["attempt"] == 1 and status["restarts"] == 1

    # The third finishes: attempt 1 of the second is admitted and runs.
    _finish(kubectl, ns, "third")
    kubectl.wait("--for=condition=Running", "trainingrun/second", "-n", ns)
    status = _status(kubectl, ns, "second")
    assert status["attempt"] == 1
    assert f"attempt 1 (LocalQueue {QUEUE})" in _condition(status, "Admitted")["message"]
    _finish(kubectl, ns, "second")


def test_a_suspended_queued_run_gives_its_quota_back(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gpu_quota: str
) -> None:
    """spec.suspend on a queued run deletes its Job (Kueue would un-suspend an admitted
    one): the quota goes to the next run; on resume the run queues again."""
    ns = namespace
    kubectl.apply(_run("paused"), "-n", ns)
    kubectl.wait("--for=condition=Running", "trainingrun/paused", "-n", ns)
    kubectl.apply(_run("next"), "-n", ns)
    _waiting_for_quota(kubectl, ns, "next", 0)

    patch = json.dumps({"spec": {"suspend": True}})
    kubectl.run("patch", "trainingrun/paused", "-n", ns, "--type=merge", "-p", patch)
    kubectl.wait("--for=condition=Suspended", "trainingrun/paused", "-n", ns)
    kubectl.wait("--for=delete", "job/paused-0", "-n", ns)
    kubectl.wait("--for=condition=Running", "trainingrun/next", "-n", ns)

    patch = json.dumps({"spec": {"suspend": False}})
    kubectl.run("patch", "trainingrun/paused", "-n", ns, "--type=merge", "-p", patch)
    status = _waiting_for_quota(kubectl, ns, "paused", 0)
    assert status["phase"] == "Pending"
    _finish(kubectl, ns, "next")
    kubectl.wait("--for=condition=Running", "trainingrun/paused", "-n", ns)
