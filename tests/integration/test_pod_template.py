"""The pod template on the real control plane: a TrainingRun with imagePullSecrets, an init
container, a sidecar and a securityContext, applied with kubectl, gets the Job and pods you
would expect (as the apiserver holds them, run by kwok); a podTemplate that sets a field the
operator owns is refused at `kubectl apply`, naming the field; a gang-scheduled run's
PodGroup is created, owned by the run, with its pods in it; init containers and sidecars
pass PodSecurity `restricted`; the chart's operator role may manage both PodGroup kinds."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_pod_security import VIOLATION, _dry_run, _pod, team_b
from tradewind.api import TrainingRun, parse_resource
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL
from tradewind.operator import builders, pod_security
from tradewind.operator.settings import OperatorSettings

pytestmark = pytest.mark.integration
__all__ = ["team_b"]  # the fixture: a namespace enforcing PodSecurity `restricted`


def _run(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"nodes": 2, "training": {"epochs": 1}, **spec},
    }


def _pods(kubectl: Kubectl, ns: str, run: str, count: int) -> list[dict[str, Any]]:
    """The run's pods once `count` of them exist (bounded wait)."""
    deadline = time.monotonic() + 90
    while True:
        pods = kubectl.get("pods", "-n", ns, "-l", f"{builders.RUN_LABEL}={run}")["items"]
        if len(pods) >= count:
            return list(pods)
        assert time.monotonic() < deadline, f"{len(pods)} pods of {run}"
        time.sleep(0.5)


def test_init_container_sidecar_pull_secret_and_security_context_reach_the_pods(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    template = {
        "labels": {HOLD_LABEL: "true"},  # kwok keeps them running while the test reads them
        "imagePullSecrets": [{"name": "regcred"}],
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [44]},
        "initContainers": [
            {"name": "fetch-data", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}
        ],
        "sidecars": [
            {"name": "metrics", "image": "prom/statsd-exporter:v0.26.0",
             "ports": [{"containerPort": 9102}]}
        ],
    }  # fmt: skip
    kubectl.apply(_run("templated", podTemplate=template), "-n", namespace)
    kubectl.wait("--for=create", "job/templated-0", "-n", namespace)
    job = kubectl.get("job/templated-0", "-n", namespace)
    pods = _pods(kubectl, namespace, "templated", 2)
    for spec in [job["spec"]["template"]["spec"], *(p["spec"] for p in pods)]:
        assert {"name": "regcred"} in spec["imagePullSecrets"]
        init = spec["initContainers"]
        assert [c["name"] for c in init] == ["fetch-data", "metrics"]
        assert init[0].get("restartPolicy") is None  # runs to completion first
        assert init[1]["restartPolicy"] == "Always"  # a native sidecar
        assert init[1]["ports"][0]["containerPort"] == 9102
        assert [c["name"] for c in spec["containers"]] == ["trainer"]
        context = spec["securityContext"]
        assert context["fsGroup"] == 2000 and context["supplementalGroups"] == [44]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == pod_security.TRAINER_UID
        (trainer,) = spec["containers"]
        assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["restartPolicy"] == "Never"


def _apply_refused(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> str:
    result = kubectl.run(
        "apply", "--server-side", "-n", namespace, "-f", "-",
        stdin=json.dumps(manifest), check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_overriding_an_operator_owned_field_is_refused_at_kubectl_apply(
    kubectl: Kubectl, crds_installed: None, namespace: str
) -> None:
    for field, value in (("restartPolicy", "OnFailure"),
                         ("containers", [{"name": "trainer", "image": "mine"}])):  # fmt: skip
        refusal = _apply_refused(kubectl, namespace, _run("owned", podTemplate={field: value}))
        assert f"spec.podTemplate.{field}" in refusal, refusal
        assert f"{field} is the operator's" in refusal, refusal
    mount = {"volumes": [{"name": "data", "emptyDir": {}}],
             "volumeMounts": [{"name": "data", "mountPath": "/etc/tradewind"}]}  # fmt: skip
    refusal = _apply_refused(kubectl, namespace, _run("owned", podTemplate=mount))
    assert "spec.podTemplate.volumeMounts" in refusal, refusal
    assert "one of the operator's paths" in refusal, refusal
    sidecar = {"sidecars": [{"name": "trainer", "image": "mine"}]}
    refusal = _apply_refused(kubectl, namespace, _run("owned", podTemplate=sidecar))
    assert "spec.podTemplate.sidecars" in refusal and "trainer is the operator's" in refusal
    assert kubectl.run("get", "trainingrun/owned", "-n", namespace, check=False).returncode != 0


COSCHEDULING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
"""scheduler-plugins' PodGroup, its schema left open: the apiserver stores what the operator
creates (no scheduler-plugins scheduler runs here; the pods stay Pending)."""


def test_a_gang_scheduled_run_gets_its_pod_group_owned_by_it_with_its_pods_in_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(COSCHEDULING_CRD)
    try:
        kubectl.wait("--for=condition=Established", "crd/podgroups.scheduling.x-k8s.io")
        _gang_run_and_its_pod_group(kubectl, namespace)
    finally:
        kubectl.run("delete", "crd/podgroups.scheduling.x-k8s.io", "--wait=false", check=False)


def _gang_run_and_its_pod_group(kubectl: Kubectl, namespace: str) -> None:
    gang = {"scheduler": "coscheduling", "scheduleTimeoutSeconds": 120}
    kubectl.apply(_run("gang", gangScheduling=gang), "-n", namespace)
    kubectl.wait("--for=create", "podgroup.scheduling.x-k8s.io/gang-0", "-n", namespace)
    group = kubectl.get("podgroup.scheduling.x-k8s.io/gang-0", "-n", namespace)
    run = kubectl.get("trainingrun/gang", "-n", namespace)
    assert group["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 120}
    (owner,) = group["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("TrainingRun", run["metadata"]["uid"])
    kubectl.wait("--for=create", "job/gang-0", "-n", namespace)
    for pod in _pods(kubectl, namespace, "gang", 2):
        assert pod["metadata"]["labels"][builders.COSCHEDULING_GROUP_LABEL] == "gang-0"
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_init_containers_and_sidecars_pass_restricted_as_the_trainer_does(
    kubectl: Kubectl, team_b: str
) -> None:
    """The apiserver's PodSecurity admission, in a namespace enforcing `restricted`, admits
    the operator's pod with a plain init container and sidecar (no securityContext written)."""
    template = {
        "initContainers": [{"name": "fetch", "image": "busybox:1.36"}],
        "sidecars": [{"name": "metrics", "image": "prom/statsd-exporter:v0.26.0"}],
    }
    doc = _run("restricted", podTemplate=template)
    doc["metadata"]["namespace"] = team_b
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    job = builders.build_job(run, 0, "u", {}, OperatorSettings())
    del job["metadata"]["ownerReferences"]  # dry runs: nothing to own them
    admitted = _dry_run(kubectl, job, _pod(job, "restricted-0"))
    assert admitted.returncode == 0, admitted.stderr
    assert VIOLATION not in admitted.stderr


def test_the_charts_operator_role_may_manage_pod_groups_and_list_kueue_workloads(
    kubectl: Kubectl, stack: DevStack, namespace: str, tmp_path: Path
) -> None:
    """Asked of the apiserver's RBAC authorizer (SubjectAccessReview by API group: neither
    PodGroup CRD need be installed, as `kubectl auth can-i` would need)."""
    from tests.integration.test_helm import Helm

    release = f"pg-{uuid.uuid4().hex[:6]}"
    docs = Helm(stack, tmp_path).template(release, namespace, {})
    (role,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == f"{release}-tradewind"
    ]  # the operator's (not the aggregated user roles)
    user = f"system:serviceaccount:{namespace}:{release}"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": release, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role["metadata"]["name"]},
        "subjects": [{"kind": "User", "name": user}],
    }  # fmt: skip
    kubectl.apply(role)
    try:
        kubectl.apply(binding)
        for group in ("scheduling.volcano.sh", "scheduling.x-k8s.io"):
            for verb, allowed in (("get", True), ("create", True), ("delete", True),
                                  ("update", False), ("list", False)):  # fmt: skip
                attributes = {"namespace": namespace, "group": group, "resource": "podgroups",
                              "verb": verb}  # fmt: skip
                review = {"apiVersion": "authorization.k8s.io/v1",
                          "kind": "SubjectAccessReview",
                          "spec": {"user": user, "resourceAttributes": attributes}}  # fmt: skip
                out = kubectl.run("create", "-o", "json", "-f", "-", stdin=json.dumps(review))
                status = json.loads(out.stdout)["status"]
                assert status.get("allowed", False) is allowed, (group, verb, status)
        # Why a queued run waits: its Kueue Workload (operator/kueue.py), listed, never written.
        for verb, allowed in (("list", True), ("update", False), ("delete", False)):
            attributes = {"namespace": namespace, "group": "kueue.x-k8s.io",
                          "resource": "workloads", "verb": verb}  # fmt: skip
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": user, "resourceAttributes": attributes}}  # fmt: skip
            out = kubectl.run("create", "-o", "json", "-f", "-", stdin=json.dumps(review))
            status = json.loads(out.stdout)["status"]
            assert status.get("allowed", False) is allowed, ("workloads", verb, status)
    finally:
        kubectl.run("delete", "clusterrole", role["metadata"]["name"], check=False)
