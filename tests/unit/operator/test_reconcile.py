"""reconcile() against a recording stand-in for the apiserver layer: what it writes, and when
it leaves a write out (the operator's scale depends on writing each run's status rarely)."""

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from tradewind.api.status import RunStatus
from tradewind.operator import builders
from tradewind.operator import reconcile as reconcile_module
from tradewind.operator.kube import Refused
from tradewind.operator.reconcile import SpecCache, counts_only, parse_run, reconcile
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import decide, observe_attempt

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class RecordingKube:
    """Kube's interface; records every call instead of making it. `refuse` maps a kind to
    the Refused its create raises; `pod_refusal` is the FailedCreate message of any Job."""

    def __init__(
        self, refuse: dict[str, Refused] | None = None, pod_refusal: str | None = None
    ) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refuse = refuse or {}
        self.pod_refusal = pod_refusal

    def create(self, manifest: dict[str, Any]) -> None:
        self.calls.append(("create", manifest["kind"]))
        if manifest["kind"] in self.refuse:
            raise self.refuse[manifest["kind"]]

    def delete(self, kind: str, ns: str, name: str, uid: str | None = None) -> None:
        self.calls.append(("delete", f"{kind}/{name}"))

    def set_job_suspended(
        self, ns: str, name: str, suspended: bool, uid: str | None = None
    ) -> None:
        self.calls.append(("suspend", suspended))

    def failed_create(self, ns: str, uid: str, max_age: float = 0.0) -> str | None:
        self.calls.append(("events", uid))
        return self.pod_refusal

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str:
        self.calls.append(("status", status.phase))
        return "7"

    def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.calls.append(("event", reason))


def _body(
    generation: int = 1, labels: dict[str, str] | None = None, name: str = "r"
) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "u-1",
            "generation": generation,
            "labels": labels or {},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"nodes": 2},
    }


def _job() -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: "0", builders.ROLE_LABEL: "train"}
    return {"metadata": {"name": "r-0", "labels": labels}, "spec": {"completions": 2}}


def _pod(name: str, phase: str) -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: "0", builders.ROLE_LABEL: "train"}
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


def _reconcile(body: dict[str, Any], kube: RecordingKube, **kw: Any) -> Any:
    return reconcile(body, kw.pop("jobs", []), kw.pop("pods", []), kube, OperatorSettings(),  # type: ignore[arg-type]
                     now=NOW, **kw)  # fmt: skip


def test_a_new_run_gets_its_children_one_status_write_and_one_event() -> None:
    kube = RecordingKube()
    decision = _reconcile(_body(), kube)
    assert [c for c in kube.calls if c[0] == "create"] == [
        ("create", "ConfigMap"),
        ("create", "Service"),
        ("create", "Job"),
    ]
    assert ("status", "Pending") in kube.calls and decision.written_version == "7"
    assert [c for c in kube.calls if c[0] == "event"] == [("event", "Created")]


def test_the_job_appearing_without_running_pods_writes_nothing() -> None:
    body, kube = _body(), RecordingKube()
    body["status"] = _reconcile(body, RecordingKube()).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    decision = _reconcile(body, kube, jobs=[_job()], pods=[_pod("r-0-0", "Pending")])
    assert kube.calls == [] and decision.status.phase == "Pending"


def test_pod_counts_of_a_pending_run_wait_when_asked_and_transitions_do_not() -> None:
    body = _body()
    body["status"] = _reconcile(body, RecordingKube()).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    one_running = {"jobs": [_job()], "pods": [_pod("r-0-0", "Running"), _pod("r-0-1", "Pending")]}

    kube = RecordingKube()
    deferred = _reconcile(body, kube, defer_counts=True, **one_running)
    assert deferred.deferred and deferred.status.nodes_ready == 1 and kube.calls == []

    kube = RecordingKube()
    written = _reconcile(body, kube, defer_counts=False, **one_running)
    assert not written.deferred and kube.calls == [("status", "Pending")]

    kube = RecordingKube()
    both = [_pod("r-0-0", "Running"), _pod("r-0-1", "Running")]
    running = _reconcile(body, kube, defer_counts=True, jobs=[_job()], pods=both)
    assert not running.deferred and running.status.phase == "Running"
    assert kube.calls == [("status", "Running"), ("event", "AllNodesRunning")]


def test_the_jobs_start_time_waits_with_the_pod_counts() -> None:
    """The Job controller starting the Job of a Pending run is no write of its own (on a busy
    cluster it was a third status write per run): it waits like the pod counts, and the
    write that says Running carries it."""
    body = _body()
    body["status"] = _reconcile(body, RecordingKube()).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    job = _job() | {"status": {"startTime": "2026-01-01T00:00:00Z"}}
    pending = {"jobs": [job], "pods": [_pod("r-0-0", "Pending"), _pod("r-0-1", "Pending")]}

    kube = RecordingKube()
    deferred = _reconcile(body, kube, defer_counts=True, **pending)
    assert deferred.deferred and kube.calls == [] and deferred.status.start_time == NOW

    kube = RecordingKube()
    written = _reconcile(body, kube, defer_counts=False, **pending)
    assert kube.calls == [("status", "Pending")] and written.status.start_time == NOW

    both = [_pod("r-0-0", "Running"), _pod("r-0-1", "Running")]
    running = _reconcile(body, RecordingKube(), defer_counts=True, jobs=[job], pods=both)
    assert running.status.phase == "Running" and running.status.start_time == NOW


def test_counts_only_is_about_pending_pod_counts() -> None:
    run = parse_run(_body())
    pending = decide(run, RunStatus(), observe_attempt(None, []), NOW, 1).status
    job = {"metadata": {"name": "r-0"}, "spec": {"completions": 2}, "status": {}}
    one = decide(run, pending, observe_attempt(job, [_pod("a", "Running")]), NOW, 1).status
    assert one.nodes_ready == 1 and counts_only(pending, one)
    both = [_pod("a", "Running"), _pod("b", "Running")]
    running = decide(run, one, observe_attempt(job, both), NOW, 1).status
    assert not counts_only(one, running)
    restarted = one.model_copy(update={"restarts": 1})
    assert not counts_only(pending, restarted)


def test_spec_cache_parses_again_only_when_what_it_reads_changes(monkeypatch) -> None:
    parsed = []
    monkeypatch.setattr(reconcile_module, "parse_run", lambda b: parsed.append(b) or parse_run(b))
    cache = SpecCache()
    first = cache.parse(_body())
    # managedFields and the like are not kept in the model; the uid is (children's labels)
    assert first.metadata.model_extra == {"uid": "u-1"}
    assert cache.parse(_body()) is first and len(parsed) == 1
    cache.parse(_body(generation=2))
    assert len(parsed) == 2
    cache.parse(_body(generation=2))
    assert len(parsed) == 2
    assert cache.parse(_body(generation=2, labels={"a": "b"})) is not first
    assert cache.run is not None and cache.run.metadata.labels == {"a": "b"}


def test_equal_parts_of_parsed_runs_are_kept_once() -> None:
    """Two runs of one spec share its parsed model; a section set differently does not, nor
    one set explicitly to its default (the ConfigMap dumps what was set)."""
    one, two = SpecCache().parse(_body()), SpecCache().parse(_body(name="other"))
    assert one is not two and one.metadata.name != two.metadata.name
    assert one.spec is two.spec
    other = _body(name="third")
    other["spec"]["training"] = {"epochs": 3}
    three = SpecCache().parse(other)
    assert three.spec is not one.spec and three.spec.model is one.spec.model
    assert three.spec.training.epochs == 3 and one.spec.training.epochs != 3
    explicit = _body(name="fourth")
    explicit["spec"]["device"] = one.spec.device
    assert SpecCache().parse(explicit).spec is not one.spec


def test_a_worker_keeps_the_parsed_model_not_the_spec_it_came_from() -> None:
    cache = SpecCache()
    assert "spec" in cache.without_parsed_spec(_body())  # nothing parsed yet
    cache.parse(_body())
    lean = cache.without_parsed_spec(_body())
    assert "spec" not in lean and lean["metadata"] == _body()["metadata"]
    assert cache.parse(lean) is cache.run  # the cached model serves the lean body
    assert "spec" in cache.without_parsed_spec(_body(generation=2))  # a new spec: kept
    assert "spec" in cache.without_parsed_spec(_body(labels={"a": "b"}))
    invalid = _body(generation=3)
    invalid["spec"]["nodes"] = 0
    with pytest.raises(ValidationError):
        cache.parse(invalid)
    assert "spec" in cache.without_parsed_spec(invalid)


def test_children_created_moments_ago_are_not_created_again() -> None:
    body = _body()
    first = _reconcile(body, RecordingKube())
    body["status"] = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    kube = RecordingKube()
    again = _reconcile(body, kube, created_attempt=0)  # the watch has not shown the Job yet
    assert kube.calls == [] and again.status.phase == "Pending"
    kube = RecordingKube()
    _reconcile(body, kube)  # without that memory (e.g. a restarted operator): idempotent creates
    assert [c[1] for c in kube.calls if c[0] == "create"] == ["ConfigMap", "Service", "Job"]


def test_a_running_run_reconciled_again_writes_nothing() -> None:
    """The kstatus conditions (Reconciling, Stalled) follow the phase: no write of their own."""
    body = _body()
    body["status"] = _reconcile(body, RecordingKube()).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    both = {"jobs": [_job()], "pods": [_pod("r-0-0", "Running"), _pod("r-0-1", "Running")]}
    running = _reconcile(body, RecordingKube(), **both)
    body["status"] = running.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    kube = RecordingKube()
    again = _reconcile(body, kube, **both)
    assert kube.calls == [] and again.status == running.status


def test_a_spec_the_models_refuse_fails_the_run_and_stalls_it() -> None:
    body = _body()
    body["spec"] = {"nodes": 0}
    kube = RecordingKube()
    status = _reconcile(body, kube).status
    assert status.phase == "Failed" and kube.calls[0] == ("status", "Failed")
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Failed"] == ("True", "InvalidSpec")
    assert conditions["Stalled"] == ("True", "InvalidSpec")
    assert conditions["Reconciling"] == ("False", "Failed")
    assert conditions["Ready"] == ("False", "InvalidSpec")
