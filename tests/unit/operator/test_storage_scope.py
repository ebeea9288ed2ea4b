"""The storage a run may name: its namespace's prefix, plus what an administrator allows."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tradewind.api import RLRun, TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator.reconcile import reconcile
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.storage_scope import (
    ALLOWED_STORAGE_ANNOTATION,
    allowed_prefixes,
    storage_refusal,
    within,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BUCKET = "tradewind"


def _body(spec: dict[str, Any], kind: str = "TrainingRun", ns: str = "team-a") -> dict[str, Any]:
    if kind == "RLRun":
        spec = {"agents": [{"name": "ppo", "algorithm": "ppo"}], **spec}
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "r", "namespace": ns, "uid": "u-1", "generation": 1},
        "spec": spec,
    }


def _run(spec: dict[str, Any], kind: str = "TrainingRun") -> TrainingRun | RLRun:
    if kind == "RLRun" and "data" in spec:  # an RLRun's market is its environment's
        spec = {k: v for k, v in spec.items() if k != "data"} | {
            "environment": {"data": spec["data"]}
        }
    model = TrainingRun if kind == "TrainingRun" else RLRun
    return model.model_validate(_body(spec, kind))


def test_a_prefix_ends_at_a_slash() -> None:
    assert within("s3://tradewind/team-a", "s3://tradewind/team-a/")
    assert within("s3://tradewind/team-a/r/ckpt", "s3://tradewind/team-a/")
    assert not within("s3://tradewind/team-ab/r", "s3://tradewind/team-a/")
    assert not within("s3://tradewind", "s3://tradewind/team-a/")
    assert allowed_prefixes(BUCKET, "team-a", " s3://shared , s3://x/y/,,") == [
        "s3://tradewind/team-a/",
        "s3://shared/",
        "s3://x/y/",
    ]


@pytest.mark.parametrize("kind", ["TrainingRun", "RLRun"])
@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("spec.checkpoint.storage", {"checkpoint": {"storage": "s3://tradewind/team-b/r"}}),
        ("spec.checkpoint.resumeFrom", {"checkpoint": {"resumeFrom": "s3://tradewind/team-b/r"}}),
        ("spec.data.source", {"data": {"source": "s3://tradewind/team-b/prices.csv"}}),
        ("spec.checkpoint.storage", {"checkpoint": {"storage": "s3://other-bucket/team-a/r"}}),
        ("spec.checkpoint.storage", {"checkpoint": {"storage": "s3://tradewind/team-ab/r"}}),
    ],
)
def test_another_namespaces_prefix_is_refused_naming_the_field(
    kind: str, field: str, spec: dict[str, Any]
) -> None:
    message = storage_refusal(_run(spec, kind), BUCKET)
    assert message is not None
    if kind == "RLRun":
        field = field.replace("spec.data", "spec.environment.data")
    assert message.startswith(f"{field}: s3://")
    assert "allowed: s3://tradewind/team-a/ " in message
    assert ALLOWED_STORAGE_ANNOTATION in message


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"checkpoint": {"storage": "s3://tradewind/team-a/r", "resumeFrom": "none"}},
        {"checkpoint": {"storage": "s3://tradewind/team-a"}},
        {"checkpoint": {"resumeFrom": "s3://tradewind/team-a/old/uid-0/step-0000000003"}},
        {"checkpoint": {"storage": "file:///data/ckpt", "resumeFrom": "latest"}},
        {"data": {"source": "s3://tradewind/team-a/prices.csv"}},
        {"data": {"source": "stocks"}},
    ],
)
def test_the_own_prefix_and_non_s3_uris_pass(spec: dict[str, Any]) -> None:
    assert storage_refusal(_run(spec), BUCKET) is None


def test_the_admin_annotation_allows_more_and_no_more() -> None:
    run = _run({"data": {"source": "s3://shared/prices/all.csv"}})
    assert storage_refusal(run, BUCKET) is not None
    assert storage_refusal(run, BUCKET, "s3://x/,s3://shared/prices") is None
    assert storage_refusal(run, BUCKET, "s3://shared/pri") is not None


@pytest.mark.parametrize(
    "uri",
    [
        "s3://tradewind/team-a/../team-b/r",
        "s3://tradewind/team-a/%2e%2e/team-b/r",
        "s3://tradewind/team-a/./x",
        "s3://tradewind/team-a/r/..",
    ],
)
def test_escapes_and_dot_segments_are_refused_even_under_the_own_prefix(uri: str) -> None:
    message = storage_refusal(_run({"checkpoint": {"storage": uri}}), BUCKET)
    assert message == (
        f"spec.checkpoint.storage: {uri} must not contain '%' escapes or '.'/'..' path segments"
    )


class NamespaceKube:
    """Kube's interface for reconcile; the namespace read answers from `annotations`."""

    def __init__(self, annotations: dict[str, str] | None, status: int = 200) -> None:
        self.annotations, self.status = annotations, status
        self.calls: list[tuple[str, Any]] = []

    def request(self, method: str, path: str, body: Any = None) -> bytes:
        self.calls.append(("request", path))
        if self.status != 200:
            raise ApiException(status=self.status, reason="Forbidden")
        return json.dumps({"metadata": {"annotations": self.annotations}}).encode()

    def create(self, manifest: dict[str, Any]) -> None:
        self.calls.append(("create", manifest["kind"]))

    def delete(self, kind: str, ns: str, name: str, uid: str | None = None) -> None:
        self.calls.append(("delete", f"{kind}/{name}"))

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str:
        self.calls.append(("status", status))
        return "7"

    def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.calls.append(("event", reason))


def _reconcile(body: dict[str, Any], kube: NamespaceKube, **settings: Any) -> RunStatus:
    decision = reconcile(body, [], [], kube, OperatorSettings(**settings), now=NOW)  # type: ignore[arg-type]
    return decision.status


def test_the_operator_fails_a_run_out_of_reach_and_creates_nothing() -> None:
    body = _body({"checkpoint": {"resumeFrom": "s3://tradewind/team-b/r/u/step-0000000001"}})
    kube = NamespaceKube(annotations=None)
    status = _reconcile(body, kube)
    assert status.phase == "Failed"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "StorageNotAllowed"
    assert failed.message.startswith("spec.checkpoint.resumeFrom: s3://tradewind/team-b/")
    assert [c[0] for c in kube.calls] == ["request", "status", "event"]
    assert kube.calls[0] == ("request", "/api/v1/namespaces/team-a")


def test_the_operator_follows_the_admin_annotation_and_reads_no_namespace_otherwise() -> None:
    shared = _body({"data": {"source": "s3://shared/prices.csv"}})
    kube = NamespaceKube(annotations={ALLOWED_STORAGE_ANNOTATION: "s3://shared/"})
    assert _reconcile(shared, kube).phase == "Pending"
    assert ("create", "Job") in kube.calls

    own = NamespaceKube(annotations=None)
    assert _reconcile(_body({}), own).phase == "Pending"
    assert not [c for c in own.calls if c[0] == "request"]

    unreadable = NamespaceKube(annotations=None, status=403)
    assert _reconcile(shared, unreadable).phase == "Failed"


def test_a_running_run_that_falls_out_of_reach_stops_its_own_jobs_only() -> None:
    """An administrator narrowed the namespace's reach while the run trained: Failed, and
    its attempt stops writing there; a same-named predecessor's Job is not touched."""
    body = _body({"data": {"source": "s3://shared/prices.csv"}})
    body["status"] = {"phase": "Running", "attempt": 0}
    labels = {"tradewind.dev/attempt": "0", "tradewind.dev/role": "train"}
    ours = {"metadata": {"name": "r-0", "uid": "j-1", "owner": "u-1", "labels": labels}}
    older = {"metadata": {"name": "r-0-old", "uid": "j-0", "owner": "u-0", "labels": labels}}
    kube = NamespaceKube(annotations=None)
    decision = reconcile(body, [ours, older], [], kube, OperatorSettings(), now=NOW)  # type: ignore[arg-type]
    assert decision.status.phase == "Failed"
    assert [c for c in kube.calls if c[0] == "delete"] == [("delete", "Job/r-0")]


def test_the_check_can_be_turned_off() -> None:
    body = _body({"checkpoint": {"storage": "s3://elsewhere/r"}})
    kube = NamespaceKube(annotations=None)
    assert _reconcile(body, kube, storage_scope=False).phase == "Pending"
