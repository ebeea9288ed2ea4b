"""PodSecurity `restricted` on the real control plane: a namespace that enforces it runs the
quickstart TrainingRun, RLRun and Sweep to Succeeded (kwok runs their pods); the apiserver
admits the operator's Jobs and pods there without a warning, and refuses the same pod
without its security context, so it is the security context that gets them in."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.api import RLRun, TrainingRun, parse_resource
from tradewind.api.identity import SWEEP_LABEL
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL
from tradewind.operator import builders
from tradewind.operator.settings import OperatorSettings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHART = Path(__file__).resolve().parents[2] / "helm" / "tradewind"
POD_SECURITY = "pod-security.kubernetes.io"
VIOLATION = "PodSecurity"
"""In the apiserver's refusal (`violates PodSecurity ...`) and warning (`would violate ...`)."""


def _label_restricted(kubectl: Kubectl, name: str) -> None:
    kubectl.run(
        "label", "namespace", name, "--overwrite",
        *(f"{POD_SECURITY}/{mode}=restricted" for mode in ("enforce", "warn", "audit")),
        *(f"{POD_SECURITY}/{mode}-version=latest" for mode in ("enforce", "warn", "audit")),
    )  # fmt: skip


@pytest.fixture
def team_b(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace that enforces (and warns and audits) PodSecurity `restricted`."""
    name = f"team-b-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    _label_restricted(kubectl, name)
    kubectl.wait("--for=create", "serviceaccount/default", "-n", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def _example(name: str, **metadata: str) -> dict[str, Any]:
    (doc,) = yaml.safe_load_all((EXAMPLES / name).read_text())
    doc["metadata"] |= metadata
    return dict(doc)


def _jobs(namespace: str) -> list[dict[str, Any]]:
    """The operator's Jobs for the quickstart TrainingRun and RLRun (train and combine)."""
    settings = OperatorSettings()
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": str(uuid.uuid4())}
    jobs = []
    for example in ("trainingrun-quickstart.yaml", "rlrun-quickstart.yaml"):
        run = parse_resource(_example(example, namespace=namespace))
        assert isinstance(run, TrainingRun | RLRun)
        jobs.append(builders.build_job(run, 0, "u", owner, settings))
        if builders.needs_combine(run):
            jobs.append(builders.build_combine_job(run, 0, "u", owner, settings))
    for job in jobs:
        del job["metadata"]["ownerReferences"]  # dry runs: nothing to own them
    return jobs


def _pod(job: dict[str, Any], name: str) -> dict[str, Any]:
    template = copy.deepcopy(job["spec"]["template"])
    meta = {**template["metadata"], "name": name, "namespace": job["metadata"]["namespace"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def _dry_run(kubectl: Kubectl, *manifests: dict[str, Any]) -> Any:
    stdin = "\n---\n".join(json.dumps(m) for m in manifests)
    return kubectl.run("create", "--dry-run=server", "-f", "-", stdin=stdin, check=False)


def test_the_apiserver_admits_the_operators_pods_and_refuses_them_without_their_context(
    kubectl: Kubectl, team_b: str
) -> None:
    jobs = _jobs(team_b)
    pods = [_pod(job, f"pod-{i}") for i, job in enumerate(jobs)]
    admitted = _dry_run(kubectl, *jobs, *pods)
    assert admitted.returncode == 0, admitted.stderr
    assert VIOLATION not in admitted.stderr  # `warn` covers the Jobs too

    for pod in pods:
        stripped = copy.deepcopy(pod)
        stripped["spec"].pop("securityContext")
        for container in stripped["spec"]["containers"]:
            container.pop("securityContext")
        refused = _dry_run(kubectl, stripped)
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr and VIOLATION in refused.stderr, refused.stderr
        for missing in ("allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile"):
            assert missing in refused.stderr, refused.stderr


def _wait_phase(kubectl: Kubectl, resource: str, ns: str, total: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + total
    while True:
        status = kubectl.get(resource, "-n", ns).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return dict(status)
        assert time.monotonic() < deadline, f"{resource}: {status}"
        time.sleep(1)


def _assert_restricted_pods_ran(kubectl: Kubectl, ns: str, run: str) -> None:
    pods = kubectl.get("pods", "-n", ns, "-l", f"{builders.RUN_LABEL}={run}")["items"]
    assert pods, f"no pods of {run} in {ns}"
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not any(v.get("projected") for v in pod["spec"]["volumes"])  # no token volume


def test_the_quickstart_training_and_rl_runs_succeed_where_restricted_is_enforced(
    kubectl: Kubectl, operator: OperatorProcess, team_b: str
) -> None:
    runs = {
        "trainingrun/quickstart": _example("trainingrun-quickstart.yaml"),
        "rlrun/rl-quickstart": _example("rlrun-quickstart.yaml"),
    }
    for manifest in runs.values():
        kubectl.apply(manifest, "-n", team_b)
    for resource in runs:
        status = _wait_phase(kubectl, resource, team_b)
        assert status["phase"] == "Succeeded", (resource, status)
        _assert_restricted_pods_ran(kubectl, team_b, resource.split("/")[1])
    roles = {
        j["metadata"]["labels"][builders.ROLE_LABEL]
        for j in kubectl.get("jobs", "-n", team_b, "-l", f"{builders.RUN_LABEL}=rl-quickstart")[
            "items"
        ]
    }
    assert roles == {"train", "combine"}  # the ensemble's evaluation ran there too


def test_the_quickstart_sweep_succeeds_where_restricted_is_enforced(
    kubectl: Kubectl, operator: OperatorProcess, stack: DevStack, team_b: str
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.integration.test_sweep_operator import _log_val_loss

    mlflow = MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])
    sweep = _example("sweep-quickstart.yaml")
    sweep["spec"] |= {"maxTrials": 2, "parallelism": 2}
    # Held until this test has logged what the trainer would (kwok runs no trainer).
    sweep["spec"]["template"]["spec"]["podTemplate"] = {"labels": {HOLD_LABEL: "true"}}
    kubectl.apply(sweep, "-n", team_b)
    name = sweep["metadata"]["name"]
    released: set[str] = set()
    deadline = time.monotonic() + 240
    while (kubectl.get(f"sweep/{name}", "-n", team_b).get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, kubectl.get(f"sweep/{name}", "-n", team_b)
        children = kubectl.get("trainingruns", "-n", team_b, "-l", f"{SWEEP_LABEL}={name}")
        for child in (c["metadata"]["name"] for c in children["items"]):
            selector = f"{builders.RUN_LABEL}={child}"
            if child in released or not kubectl.get("pods", "-n", team_b, "-l", selector)["items"]:
                continue
            uid = kubectl.get(f"trainingrun/{child}", "-n", team_b)["metadata"]["uid"]
            curve = {epoch: 1.0 / epoch for epoch in range(1, 7)}
            _log_val_loss(mlflow, team_b, child, uid, curve)
            kubectl.run("label", "pods", "-n", team_b, "-l", selector, f"{HOLD_LABEL}-")
            released.add(child)
        time.sleep(0.5)
    status = kubectl.get(f"sweep/{name}", "-n", team_b)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["trials"]["completed"] + status["trials"]["pruned"] == 2, status
    assert status["trials"]["failed"] == 0, status
    for child in released:
        _assert_restricted_pods_ran(kubectl, team_b, child)


def test_the_charts_pods_are_restricted_compliant(
    kubectl: Kubectl, stack: DevStack, crds_installed: None, team_b: str, tmp_path: Path
) -> None:
    """The operator, the bundled MinIO and the bundled MLflow server, rendered and checked
    by the apiserver in a namespace that warns on `restricted`."""
    from tests.integration.test_helm import Helm

    helm = Helm(stack, tmp_path)
    values = {"minio": {"enabled": True}, "mlflowServer": {"enabled": True}}
    docs = helm.template("psa", team_b, values)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "Pod")]
    names = {d["metadata"]["name"] for d in workloads}
    assert names >= {"psa-tradewind", "psa-tradewind-minio", "psa-tradewind-mlflow"}, names
    result = kubectl.run(
        "apply", "--dry-run=server", "--server-side", "-f", "-",
        stdin="\n---\n".join(json.dumps(d) for d in workloads), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert VIOLATION not in result.stderr, result.stderr
