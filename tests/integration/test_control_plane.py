"""The real control plane: CRDs, the invalid-manifest corpus at the apiserver, Jobs on fake
GPU nodes, the garbage collector, kwok's hold and failure stages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.corpus import InvalidCase, example_paths, invalid_cases
from tests.integration.conftest import Kubectl
from tradewind.devstack.kwok import FAIL_EXIT_CODE, FAIL_LABEL, FAIL_REASON, HOLD_LABEL

pytestmark = pytest.mark.integration


def test_crds_install_and_explain(kubectl: Kubectl, crds_installed: None, namespace: str) -> None:
    explained = kubectl.run("explain", "trainingrun.spec.model").stdout
    assert "The network." in explained
    assert "fusion" in explained and "Branch fusion (hybrid)." in explained
    assert "No resources found" in kubectl.run("get", "tradewind", "-n", namespace).stderr
    specs = {"TrainingRun": {}, "RLRun": {"agents": [{"name": "a", "algorithm": "ppo"}]}}
    for kind, spec in specs.items():
        meta = {"name": f"listed-{kind.lower()}"}
        kubectl.apply(
            {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec},
            "-n",
            namespace,
        )
    listed = kubectl.run("get", "tradewind", "-n", namespace).stdout
    assert "trainingrun.tradewind.dev/listed-trainingrun" in listed
    assert "rlrun.tradewind.dev/listed-rlrun" in listed


@pytest.mark.parametrize("path", example_paths(), ids=lambda p: p.stem)
def test_examples_are_accepted_by_the_apiserver(
    kubectl: Kubectl, crds_installed: None, namespace: str, path: Any
) -> None:
    out = kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", str(path)).stdout
    assert "created (server dry run)" in out


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda c: c.name)
def test_invalid_manifests_are_rejected_by_the_apiserver(
    kubectl: Kubectl, crds_installed: None, namespace: str, case: InvalidCase
) -> None:
    result = kubectl.run(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(case.path), check=False
    )
    if not case.apiserver_rejects:
        assert result.returncode == 0, (
            "now rejected by the apiserver: drop its `apiserver: accepts` line"
        )
        return
    assert result.returncode != 0, f"the apiserver accepted {case.name}"
    assert "created" not in result.stdout


def _indexed_job(
    name: str, labels: dict[str, str], owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner is not None:
        ref = {k: owner[k] for k in ("apiVersion", "kind")}
        ref |= {k: owner["metadata"][k] for k in ("name", "uid")}
        meta["ownerReferences"] = [ref | {"blockOwnerDeletion": True}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "tradewind-trainer:test",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def test_indexed_gpu_job_completes_and_is_collected_with_its_owner(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "owner"},
    }
    kubectl.apply(run, "-n", namespace)
    owner = kubectl.get("trainingrun/owner", "-n", namespace)
    kubectl.apply(_indexed_job("gpu-job", {"app": "gpu-job"}, owner), "-n", namespace)
    kubectl.wait("--for=condition=Complete", "job/gpu-job", "-n", namespace)
    pods = kubectl.get("pods", "-n", namespace, "-l", "app=gpu-job")["items"]
    assert len(pods) == 2
    nodes = {
        kubectl.get(f"node/{p['spec']['nodeName']}")["metadata"]["labels"]["tradewind.dev/gpu-pool"]
        for p in pods
    }
    assert nodes == {"a100"}
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)

    kubectl.run("delete", "trainingrun/owner", "-n", namespace)
    kubectl.wait("--for=delete", "job/gpu-job", "-n", namespace)


def test_held_pods_run_until_released(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(_indexed_job("held", {"app": "held", HOLD_LABEL: "true"}), "-n", namespace)
    kubectl.wait("--for=jsonpath={.status.ready}=2", "job/held", "-n", namespace)
    assert kubectl.get("job/held", "-n", namespace)["status"].get("succeeded", 0) == 0
    kubectl.run("label", "pods", "-n", namespace, "-l", "app=held", f"{HOLD_LABEL}-")
    kubectl.wait("--for=condition=Complete", "job/held", "-n", namespace)


def test_a_pod_can_be_made_to_fail_with_an_exit_code(kubectl: Kubectl, namespace: str) -> None:
    job = _indexed_job("oom", {"app": "oom", FAIL_LABEL: "true"})
    job["spec"]["template"]["metadata"]["annotations"] = {
        FAIL_EXIT_CODE: "137",
        FAIL_REASON: "OOMKilled",
    }
    kubectl.apply(job, "-n", namespace)
    kubectl.wait("--for=condition=Failed", "job/oom", "-n", namespace)
    pods = kubectl.get("pods", "-n", namespace, "-l", "app=oom")["items"]
    terminated = [
        s["state"]["terminated"]
        for p in pods
        for s in p["status"].get("containerStatuses", [])
        if "terminated" in s["state"]
    ]
    assert {"exitCode": 137, "reason": "OOMKilled"}.items() <= terminated[0].items()


def test_fields_fixed_at_creation_reject_changes_and_others_apply(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "fixed"},
        "spec": {"nodes": 2},
    }
    kubectl.apply(run, "-n", namespace)
    patch = '{"spec": {"nodes": 4}}'
    result = kubectl.run(
        "patch", "trainingrun/fixed", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0
    assert (
        "spec.nodes" in result.stderr and "cannot change after the run is created" in result.stderr
    )
    patch = '{"spec": {"training": {"epochs": 50}, "maxRestarts": 5}}'
    kubectl.run("patch", "trainingrun/fixed", "-n", namespace, "--type=merge", "-p", patch)
    spec = kubectl.get("trainingrun/fixed", "-n", namespace)["spec"]
    assert spec["training"]["epochs"] == 50 and spec["maxRestarts"] == 5 and spec["nodes"] == 2
