"""Who may create runs, on the real control plane: the chart's aggregated ClusterRoles
(rendered by the stack's helm) folded into Kubernetes' view/edit/admin by the
controller-manager, checked with `kubectl auth can-i --as` (impersonation); and a run created
as such a user gets no more than a Job of that user's namespace would."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "tradewind"
KINDS = ("trainingruns", "rlruns", "sweeps")
RELEASE = f"rbac-{uuid.uuid4().hex[:6]}"


def _aggregated_roles(stack: DevStack) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(stack.bin / "helm"), "template", RELEASE, str(CHART),
         "--show-only", "templates/aggregated-roles.yaml"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _rules_of(kubectl: Kubectl, role: str) -> set[str]:
    rules = kubectl.get(f"clusterrole/{role}").get("rules") or []
    return {r for rule in rules for r in rule.get("resources", [])}


@pytest.fixture(scope="module")
def teams(kubectl: Kubectl, stack: DevStack, crds_installed: None) -> Iterator[tuple[str, str]]:
    """The chart's aggregated roles applied; team-a where alice may edit and bob may view,
    team-b where neither may do anything."""
    roles = _aggregated_roles(stack)
    assert sorted(r["metadata"]["name"] for r in roles) == [
        f"{RELEASE}-tradewind-edit",
        f"{RELEASE}-tradewind-view",
    ]
    kubectl.apply("\n---\n".join(json.dumps(r) for r in roles))
    suffix = uuid.uuid4().hex[:6]
    team_a, team_b = f"team-a-{suffix}", f"team-b-{suffix}"
    for ns in (team_a, team_b):
        kubectl.run("create", "namespace", ns)
        kubectl.wait("--for=create", "serviceaccount/default", "-n", ns)
    kubectl.run("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice",
                "-n", team_a)  # fmt: skip
    kubectl.run("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob",
                "-n", team_a)  # fmt: skip
    # The controller-manager folds labelled ClusterRoles into the aggregated ones.
    deadline = time.monotonic() + 60
    while not all(set(KINDS) <= _rules_of(kubectl, r) for r in ("view", "edit", "admin")):
        assert time.monotonic() < deadline, "view/edit/admin never aggregated the three kinds"
        time.sleep(0.5)
    yield team_a, team_b
    for ns in (team_a, team_b):
        kubectl.run("delete", "namespace", ns, "--wait=false", check=False)
    for role in roles:
        kubectl.run("delete", "clusterrole", role["metadata"]["name"], check=False)


def _can(kubectl: Kubectl, who: str, verb: str, resource: str, namespace: str) -> bool:
    """`resource` may end in `/<subresource>` (kubectl itself reads that as an object name)."""
    resource, _, sub = resource.partition("/")
    subresource = [f"--subresource={sub}"] if sub else []
    result = kubectl.run("auth", "can-i", verb, resource, *subresource, "--as", who,
                         "-n", namespace, check=False)  # fmt: skip
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_the_edit_role_may_run_in_its_namespace_only(
    kubectl: Kubectl, teams: tuple[str, str]
) -> None:
    team_a, team_b = teams
    for kind in KINDS:
        resource = f"{kind}.tradewind.dev"
        for verb in ("create", "get", "list", "watch", "update", "patch", "delete"):
            assert _can(kubectl, "alice", verb, resource, team_a), (verb, kind)
            assert not _can(kubectl, "alice", verb, resource, team_b), (verb, kind)
        assert _can(kubectl, "alice", "deletecollection", resource, team_a), kind
        # Status is the operator's: people read it, never write it.
        assert not _can(kubectl, "alice", "patch", f"{resource}/status", team_a), kind
    # What a run turns into, alice may create herself: a run gives her no more.
    for verb, resource in (("create", "jobs.batch"), ("create", "configmaps"),
                           ("create", "services"), ("create", "pods")):  # fmt: skip
        assert _can(kubectl, "alice", verb, resource, team_a), resource
        assert not _can(kubectl, "alice", verb, resource, team_b), resource


def test_the_view_role_reads_runs_and_changes_nothing(
    kubectl: Kubectl, teams: tuple[str, str]
) -> None:
    team_a, team_b = teams
    for kind in KINDS:
        resource = f"{kind}.tradewind.dev"
        for verb in ("get", "list", "watch"):
            assert _can(kubectl, "bob", verb, resource, team_a), (verb, kind)
            assert not _can(kubectl, "bob", verb, resource, team_b), (verb, kind)
        for verb in ("create", "update", "patch", "delete"):
            assert not _can(kubectl, "bob", verb, resource, team_a), (verb, kind)


def test_a_run_created_as_alice_is_refused_where_she_may_not_and_stays_in_her_namespace(
    kubectl: Kubectl, operator: OperatorProcess, teams: tuple[str, str]
) -> None:
    team_a, team_b = teams
    kubectl.run("create", "serviceaccount", "trainer", "-n", team_a)
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "alices"},
        "spec": {"podTemplate": {"labels": {HOLD_LABEL: "true"},
                                 "serviceAccountName": "trainer"}},
    }  # fmt: skip
    refused = kubectl.run("apply", "-f", "-", "--as=alice", "-n", team_b,
                          stdin=json.dumps(run), check=False)  # fmt: skip
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    kubectl.run("apply", "-f", "-", "--as=alice", "-n", team_a, stdin=json.dumps(run))
    kubectl.wait("--for=condition=Running", "trainingrun/alices", "-n", team_a)
    job = kubectl.get("job/alices-0", "-n", team_a)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"
    assert not kubectl.get("jobs", "-n", team_b)["items"]
    (pod,) = kubectl.get("pods", "-n", team_a, "-l", "tradewind.dev/run=alices")["items"]
    assert pod["spec"]["serviceAccountName"] == "trainer"
    kubectl.run("delete", "trainingrun/alices", "-n", team_a)


def test_a_runs_pods_meet_the_namespaces_pod_security_as_a_jobs_do(
    kubectl: Kubectl, operator: OperatorProcess, teams: tuple[str, str]
) -> None:
    """A hostPath volume passes the run's validation (a Job may have one too), and the
    namespace's PodSecurity refuses the run's pods as it refuses alice's own."""
    team_a, _ = teams
    kubectl.run("label", "namespace", team_a, "pod-security.kubernetes.io/enforce=baseline")
    volume = {"name": "host", "hostPath": {"path": "/etc"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "alices-own"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [volume]},
    }
    own = kubectl.run("create", "--dry-run=server", "-f", "-", "--as=alice", "-n", team_a,
                      stdin=json.dumps(pod), check=False)  # fmt: skip
    assert own.returncode != 0 and "hostPath" in own.stderr, own.stderr
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "hostpath"},
        "spec": {"podTemplate": {"labels": {HOLD_LABEL: "true"}, "volumes": [volume],
                                 "volumeMounts": [{"name": "host", "mountPath": "/host"}]}},
    }  # fmt: skip
    kubectl.run("apply", "-f", "-", "--as=alice", "-n", team_a, stdin=json.dumps(run))
    kubectl.wait("--for=create", "job/hostpath-0", "-n", team_a)
    deadline = time.monotonic() + 60
    while True:  # the Job controller's refused pod creations, as Events on the Job
        events = kubectl.get("events", "-n", team_a, "--field-selector",
                             "involvedObject.name=hostpath-0")["items"]  # fmt: skip
        failed = [e for e in events if e["reason"] == "FailedCreate"]
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert failed and "hostPath" in failed[0]["message"], events
    assert not kubectl.get("pods", "-n", team_a, "-l", "tradewind.dev/run=hostpath")["items"]
