"""Your own code in containers: the plain DDP script of examples/ddp (written for PyTorchJob,
reading only RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* and a checkpoint folder) in an image
built FROM the trainer image as examples/trainingrun-own-code.yaml says, as a 2-node
TrainingRun on the real node under the operator's launcher (torchrun across two pods), its
checkpoint folder mirrored in MinIO and its metrics in the run's MLflow run; then a killed
container, and the next attempt resuming from the uploaded checkpoint.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from typing import Any

import pytest
import torch
import yaml

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_node_loop import (  # the real node's stack, operator and helpers
    REPO,
    _enforce_restricted,
    _index,
    _kill_container,
    _mlflow,
    _mlflow_latest,
    _pod_log,
    _pods,
    _status,
    _store,
    _until,
    _wait,
    ns,
    xkubectl,
    xoperator,
    xstack,
)
from tradewind.devstack import DevStack, images, real_node
from tradewind.devstack.images import TRAINER_IMAGE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the real node needs root"),
]
__all__ = ["ns", "xkubectl", "xoperator", "xstack"]  # fixtures, used by name

EXAMPLE = REPO / "examples" / "trainingrun-own-code.yaml"
IMAGE = "tradewind-own-code:test"
OWN_DOCKERFILE = f"""FROM {TRAINER_IMAGE}
COPY train.py /app/examples/ddp/train.py
WORKDIR /app
"""
"""What the example's comment says to build (its context here is examples/ddp)."""


@pytest.fixture(scope="module", autouse=True)
def own_image(xstack: DevStack) -> str:
    """The script's image, FROM the trainer image (which the stack's node holds), in the node."""
    built = subprocess.run(
        ["docker", "build", "-f", "-", "-t", IMAGE, str(REPO / "examples" / "ddp")],
        input=OWN_DOCKERFILE, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    plan = real_node.load_plan(xstack)
    assert plan is not None
    images.load_into_node(plan, IMAGE)
    return IMAGE


def _manifest(name: str, *args: str) -> dict[str, Any]:
    """The example as is, with its image built, but for its name and the script's arguments."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["image"] = IMAGE
    doc["spec"]["entrypoint"]["args"] = list(args)
    return dict(doc)


def _checkpoint(stack: DevStack, prefix: str) -> dict[str, Any] | None:
    store = _store(stack, prefix)
    if "checkpoint.pt" not in store.list(""):
        return None
    state = torch.load(io.BytesIO(store.get("checkpoint.pt")), weights_only=True)
    return dict(state)


def _prefix(kubectl: Kubectl, ns: str, name: str) -> str:
    uid = kubectl.get(f"trainingrun/{name}", "-n", ns)["metadata"]["uid"]
    return f"s3://tradewind/{ns}/{name}/{uid}"


def test_the_ddp_script_runs_unchanged_in_two_containers(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    _enforce_restricted(xkubectl, ns)
    name = "own-ddp"
    xkubectl.apply(_manifest(name, "--epochs", "3"), "-n", ns)
    _wait(xkubectl, "condition=Succeeded", ns, name)
    status = _status(xkubectl, ns, name)
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0

    pods = sorted(_pods(xkubectl, ns, name, 0), key=_index)
    assert [_index(p) for p in pods] == [0, 1]
    assert pods[0]["status"]["podIP"] != pods[1]["status"]["podIP"]
    logs = [_pod_log(xstack, ns, p["metadata"]["name"]) for p in pods]
    assert "rank 0 of 2" in logs[0] and "rank 1 of 2" in logs[1]  # one DDP group, two pods
    assert "epoch 3/3" in logs[0]

    # The checkpoint folder went up to the run's own prefix (namespace, name, uid).
    prefix = _prefix(xkubectl, ns, name)
    saved = _checkpoint(xstack, prefix)
    assert saved is not None and saved["epoch"] == 3 and saved["starts"] == [0]
    assert status["checkpoint"]["latest"] == prefix

    # The script logged into the MLflow run the launcher made, which the status found.
    run_id = status["mlflow"]["runId"]
    run = _mlflow(xstack, "runs/get", run_id=run_id)["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    uid = xkubectl.get(f"trainingrun/{name}", "-n", ns)["metadata"]["uid"]
    assert tags["tradewind.name"] == name and tags["tradewind.uid"] == uid
    assert run["info"]["status"] == "FINISHED"
    assert _mlflow_latest(xstack, run_id)["epoch"] == 3.0
    assert status["progress"]["percent"] == 100  # from the script's `progress` metric


def test_a_killed_pod_resumes_from_the_uploaded_checkpoint(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    name = "own-kill"
    xkubectl.apply(_manifest(name, "--epochs", "8", "--epoch-seconds", "3"), "-n", ns)
    _until("two running pods", lambda: _status(xkubectl, ns, name).get("nodesReady") == 2)
    prefix = _prefix(xkubectl, ns, name)
    uploaded = _until("a checkpoint in MinIO", lambda: _checkpoint(xstack, prefix), every=0.5)
    assert 1 <= uploaded["epoch"] < 8
    run_id = _until("the MLflow run", lambda: (_status(xkubectl, ns, name).get("mlflow") or {})
                    .get("runId"))  # fmt: skip
    (rank0,) = [p for p in _pods(xkubectl, ns, name, 0) if _index(p) == 0]
    _kill_container(xstack, rank0)  # the launcher, its torchrun and the script: no goodbye

    _wait(xkubectl, "condition=Succeeded", ns, name)
    status = _status(xkubectl, ns, name)
    assert status["restarts"] == 1 and status["attempt"] == 1

    (new_rank0,) = [p for p in _pods(xkubectl, ns, name, 1) if _index(p) == 0]
    resumed = re.search(
        r"resumed from epoch (\d+)", _pod_log(xstack, ns, new_rank0["metadata"]["name"])
    )
    assert resumed is not None
    start = int(resumed.group(1))
    assert start >= uploaded["epoch"]
    saved = _checkpoint(xstack, prefix)
    assert saved is not None and saved["epoch"] == 8 and saved["starts"] == [0, start]
    # The same MLflow run, resumed by the new attempt's launcher.
    assert status["mlflow"]["runId"] == run_id
    assert _mlflow_latest(xstack, run_id)["start_epoch"] == start


def test_launcher_none_runs_the_script_once_per_pod_as_pytorchjob_does(
    xstack: DevStack, xkubectl: Kubectl, xoperator: OperatorProcess, ns: str
) -> None:
    """No torchrun: RANK is the pod's index, MASTER_ADDR:MASTER_PORT the first pod."""
    name = "own-none"
    doc = _manifest(name, "--epochs", "2")
    doc["spec"]["entrypoint"]["launcher"] = "none"
    xkubectl.apply(doc, "-n", ns)
    _wait(xkubectl, "condition=Succeeded", ns, name)
    pods = sorted(_pods(xkubectl, ns, name, 0), key=_index)
    (container,) = pods[0]["spec"]["containers"]
    assert "tradewind.trainer.launch" not in container["command"]
    logs = [_pod_log(xstack, ns, p["metadata"]["name"]) for p in pods]
    assert "rank 0 of 2 (local rank 0)" in logs[0] and "rank 1 of 2 (local rank 0)" in logs[1]
    saved = _checkpoint(xstack, _prefix(xkubectl, ns, name))
    assert saved is not None and saved["epoch"] == 2
