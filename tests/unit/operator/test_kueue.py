"""Kueue and the run's own suspend: queued runs' Jobs are created suspended and never resumed
by the operator; a run whose Job waits says so; only a Job the operator suspended is resumed.
(The real Kueue controller: tests/integration/test_kueue.py.)"""

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.unit.operator.test_kube import Answering
from tests.unit.operator.test_reconcile import RecordingKube
from tradewind.api import TrainingRun, parse_resource
from tradewind.api.status import RunStatus
from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack import kueue as devstack_kueue
from tradewind.operator import builders, kueue
from tradewind.operator.reconcile import WORKLOAD_RECHECK_SECONDS, reconcile
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import AttemptState, decide, observe_attempt

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
QUEUE = {"kueue.x-k8s.io/queue-name": "gpu-queue"}
OWNER = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "name": "r", "uid": "u"}


def _run(labels: dict[str, str] | None = None, **spec: Any) -> TrainingRun:
    meta = {"name": "r", "namespace": "ns", "labels": labels or {}}
    run = parse_resource(
        {
            "apiVersion": "tradewind.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": meta,
            "spec": spec,
        }
    )
    assert isinstance(run, TrainingRun)
    return run


def _cond(status: RunStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def _job(suspend: bool, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "r-0", "labels": labels or {}}, "spec": {"suspend": suspend,
            "completions": 1}, "status": {}}  # fmt: skip


def test_a_queued_runs_job_is_created_suspended_for_kueue_to_admit() -> None:
    settings = OperatorSettings()
    queued = builders.build_job(_run(QUEUE, nodes=2), 0, "u", OWNER, settings)
    assert queued["spec"]["suspend"] is True
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    plain = builders.build_job(_run(nodes=2), 0, "u", OWNER, settings)
    assert plain["spec"]["suspend"] is False


def test_a_job_held_by_kueue_is_not_resumed_and_the_run_says_it_waits() -> None:
    held = AttemptState(exists=True, suspended=True, total=1, admission="insufficient quota")
    before = decide(_run(QUEUE), RunStatus(), AttemptState(exists=False), NOW, 1).status
    d = decide(_run(QUEUE), before, held, NOW, 1)
    assert "resume_job" not in d.actions and d.actions == []
    assert d.status.phase == "Pending"
    ready = _cond(d.status, "Ready")
    assert ready.status == "False" and ready.reason == "WaitingForQuota"
    assert ready.message == (
        "waiting for Kueue to admit the Job of attempt 0 (LocalQueue gpu-queue): insufficient quota"
    )
    admitted = _cond(d.status, "Admitted")
    assert admitted.status == "False" and admitted.reason == "WaitingForQuota"
    assert [e[:2] for e in d.events] == [("Normal", "WaitingForQuota")]
    # Still waiting, with a new word from Kueue: no second Event.
    again = decide(_run(QUEUE), d.status, held, NOW, 1)
    assert again.events == [] and again.actions == []


def test_an_admitted_job_runs_and_the_run_says_it_was_admitted() -> None:
    held = AttemptState(exists=True, suspended=True, total=1)
    waiting = decide(_run(QUEUE), RunStatus(phase="Pending"), held, NOW, 1).status
    admitted = AttemptState(exists=True, suspended=False, total=1, running=1)
    d = decide(_run(QUEUE), waiting, admitted, NOW, 1)
    assert d.status.phase == "Running" and d.actions == []
    cond = _cond(d.status, "Admitted")
    assert cond.status == "True" and "LocalQueue gpu-queue" in cond.message


def test_a_queued_runs_suspend_deletes_its_job_and_resume_creates_it_queued() -> None:
    running = AttemptState(exists=True, suspended=False, total=1, running=1)
    d = decide(_run(QUEUE, suspend=True), RunStatus(phase="Running"), running, NOW, 2)
    assert d.actions == ["delete_attempt"] and d.status.phase == "Suspended"
    assert "quota released" in _cond(d.status, "Suspended").message
    assert _cond(d.status, "Admitted").status == "False"
    # Held by Kueue when suspended: deleted too (it would be admitted later otherwise).
    held = AttemptState(exists=True, suspended=True, total=1)
    assert decide(_run(QUEUE, suspend=True), d.status, held, NOW, 2).actions == ["delete_attempt"]
    resumed = decide(_run(QUEUE), d.status, AttemptState(exists=False), NOW, 3)
    assert resumed.actions == ["create_attempt"] and resumed.status.attempt == 0
    # The Job created again waits for Kueue; a stale view of it is not resumed either.
    later = decide(_run(QUEUE), resumed.status, held, NOW, 3)
    assert later.actions == [] and _cond(later.status, "Ready").reason == "WaitingForQuota"


def test_pods_stopped_by_kueues_preemption_are_not_a_failure() -> None:
    preempted = observe_attempt(
        _job(True, QUEUE),
        [{"metadata": {"name": "r-0-0"}, "status": {"phase": "Failed", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 143, "reason": "Error"}}}]}}],
    )  # fmt: skip
    assert preempted.failure is not None
    d = decide(_run(QUEUE, maxRestarts=2), RunStatus(phase="Running"), preempted, NOW, 1)
    assert d.actions == [] and d.status.restarts == 0 and d.status.phase == "Pending"
    assert _cond(d.status, "Ready").reason == "WaitingForQuota"


def test_a_restart_of_a_queued_run_does_not_bypass_quota() -> None:
    failed = observe_attempt(
        _job(False, QUEUE),
        [{"metadata": {"name": "r-0-0"}, "status": {"phase": "Failed"}}],
    )
    d = decide(_run(QUEUE, maxRestarts=2), RunStatus(phase="Running"), failed, NOW, 1)
    assert d.status.phase == "Restarting" and d.status.attempt == 1
    created = decide(_run(QUEUE, maxRestarts=2), d.status, AttemptState(exists=False), NOW, 1)
    assert created.actions == ["create_attempt"]
    held = observe_attempt(_job(True, QUEUE), [])
    waiting = decide(_run(QUEUE, maxRestarts=2), created.status, held, NOW, 1)
    assert waiting.actions == [] and waiting.status.phase == "Restarting"
    ready = _cond(waiting.status, "Ready")
    assert ready.reason == "WaitingForQuota" and "attempt 1 (LocalQueue gpu-queue)" in ready.message


def test_only_a_job_the_operator_suspended_is_resumed() -> None:
    ours = observe_attempt(_job(True, {kueue.SUSPENDED_BY_RUN_LABEL: "true"}), [])
    assert ours.suspended_by_run is True
    # Resumed even when the status no longer says Suspended (a stale view after a resume).
    assert decide(_run(), RunStatus(phase="Pending"), ours, NOW, 1).actions == ["resume_job"]

    theirs = observe_attempt(_job(True, {kueue.SUSPENDED_BY_RUN_LABEL: "false"}), [])
    for before in (RunStatus(phase="Running"), RunStatus(phase="Suspended")):
        d = decide(_run(), before, theirs, NOW, 1)
        assert d.actions == [] and d.status.phase == "Pending"
        ready = _cond(d.status, "Ready")
        assert ready.reason == "JobSuspended" and "another controller" in ready.message

    # No label: suspended by an older operator if the run was Suspended, else not ours.
    unlabelled = observe_attempt(_job(True), [])
    assert unlabelled.suspended_by_run is None
    assert decide(_run(), RunStatus(phase="Suspended"), unlabelled, NOW, 1).actions == [
        "resume_job"
    ]
    assert decide(_run(), RunStatus(phase="Running"), unlabelled, NOW, 1).actions == []


def test_suspending_a_job_labels_it_as_the_runs() -> None:
    kube = Answering({}, {})
    kube.set_job_suspended("ns", "r-0", True, uid="job-uid")
    kube.set_job_suspended("ns", "r-0", False)
    (_, _, suspend), (_, _, resume) = kube.sent
    label = "/metadata/labels/tradewind.dev~1suspended-by-run"
    assert suspend[0] == {"op": "test", "path": "/metadata/uid", "value": "job-uid"}
    assert {"op": "add", "path": "/spec/suspend", "value": True} in suspend
    assert {"op": "add", "path": label, "value": "true"} in suspend
    assert {"op": "add", "path": label, "value": "false"} in resume


def test_what_kueue_says_of_a_workload() -> None:
    def wl(*conds: tuple[str, str, str]) -> dict[str, Any]:
        return {"status": {"conditions": [
            {"type": t, "status": s, "message": m} for t, s, m in conds]}}  # fmt: skip

    assert kueue.workload_message(wl(("QuotaReserved", "False", "couldn't assign"))) == (
        "couldn't assign"
    )
    checks = wl(("QuotaReserved", "True", "reserved"), ("Admitted", "False", "checks pending"))
    assert kueue.workload_message(checks) == "checks pending"
    assert (
        kueue.workload_message(wl(("QuotaReserved", "True", "x"), ("Admitted", "True", ""))) == ""
    )
    assert kueue.workload_message({}) == ""


def _error(status: int) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": "no"})
    return exc


def test_the_workload_of_a_job_is_read_by_kueues_label(caplog: pytest.LogCaptureFixture) -> None:
    reserved = {"type": "QuotaReserved", "status": "False", "message": "insufficient quota"}
    workload = {"status": {"conditions": [reserved]}}
    kube = Answering({"items": [workload]})
    assert kube.workload_message("ns", "job-uid") == "insufficient quota"
    path = kube.sent[0][1]
    assert path.startswith("/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads?")
    assert "labelSelector=kueue.x-k8s.io/job-uid%3Djob-uid" in path
    assert Answering({"items": []}).workload_message("ns", "job-uid") is None
    # Read again only once `max_age` has passed (each read costs a request).
    twice = Answering({"items": [workload]}, {"items": []})
    assert twice.workload_message("ns", "j", max_age=30) == "insufficient quota"
    assert twice.workload_message("ns", "j", max_age=30) == "insufficient quota"
    assert len(twice.sent) == 1
    assert twice.workload_message("ns", "j", max_age=0) is None and len(twice.sent) == 2
    # An older Kueue (v1beta1 only), no Kueue (404), no permission (403): nothing known,
    # one warning each.
    older = Answering(_error(404), {"items": [workload]})
    assert older.workload_message("ns", "u") == "insufficient quota"
    assert "/v1beta1/" in older.sent[1][1]
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert Answering(_error(404), _error(404)).workload_message("ns", "u") == ""
            assert Answering(_error(403)).workload_message("ns", "u") == ""
    assert len([r for r in caplog.records if "Workloads not read" in r.message]) <= 2
    with pytest.raises(ApiException):
        Answering(_error(500)).workload_message("ns", "u")


class WorkloadKube(RecordingKube):
    def __init__(self, message: str | None) -> None:
        super().__init__()
        self.message = message

    def workload_message(self, ns: str, job_uid: str, max_age: float = 0.0) -> str | None:
        self.calls.append(("workload", job_uid))
        return self.message


def _body(labels: dict[str, str]) -> dict[str, Any]:
    meta = {"name": "r", "namespace": "ns", "uid": "u-1", "generation": 1, "labels": labels}
    return {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "metadata": meta,
            "spec": {"nodes": 1}}  # fmt: skip


def _held_job(age_seconds: float) -> dict[str, Any]:
    created = (NOW - dt.timedelta(seconds=age_seconds)).isoformat()
    labels = {builders.ATTEMPT_LABEL: "0", builders.ROLE_LABEL: "train", **QUEUE}
    return {"metadata": {"name": "r-0", "uid": "job-1", "labels": labels,
                         "creationTimestamp": created},
            "spec": {"suspend": True, "completions": 1}}  # fmt: skip


def test_a_waiting_run_reads_kueues_word_once_its_job_is_a_few_seconds_old() -> None:
    kube = WorkloadKube("couldn't assign flavors to pod set main: insufficient quota")
    young = reconcile(_body(QUEUE), [_held_job(1)], [], kube, OperatorSettings(), now=NOW)  # type: ignore[arg-type]
    assert ("workload", "job-1") not in kube.calls and young.recheck_seconds == 4
    assert _cond(young.status, "Ready").message.endswith("(LocalQueue gpu-queue)")

    kube = WorkloadKube("couldn't assign flavors to pod set main: insufficient quota")
    old = reconcile(_body(QUEUE), [_held_job(6)], [], kube, OperatorSettings(), now=NOW)  # type: ignore[arg-type]
    assert ("workload", "job-1") in kube.calls and ("suspend", False) not in kube.calls
    assert old.recheck_seconds == WORKLOAD_RECHECK_SECONDS
    assert _cond(old.status, "Ready").message.endswith(": insufficient quota")

    none_yet = WorkloadKube(None)
    d = reconcile(_body(QUEUE), [_held_job(6)], [], none_yet, OperatorSettings(), now=NOW)  # type: ignore[arg-type]
    assert "is Kueue running" in _cond(d.status, "Ready").message


def test_a_run_without_a_queue_never_reads_workloads() -> None:
    kube = WorkloadKube("x")
    job = _held_job(60)
    del job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    d = reconcile(_body({}), [job], [], kube, OperatorSettings(), now=NOW)  # type: ignore[arg-type]
    assert not [c for c in kube.calls if c[0] == "workload"]
    assert _cond(d.status, "Ready").reason == "JobSuspended"


def test_the_dev_stack_runs_kueue_when_asked_and_remembers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not DevStack(StackConfig(dev_dir=tmp_path / "plain")).with_kueue
    stack = DevStack(StackConfig(dev_dir=tmp_path, kueue=True))
    stack._assign_ports()
    proc = devstack_kueue.process(stack)
    ports = stack.state["ports"]
    assert proc.ports == [ports["kueue-health"], ports["kueue-webhook"]]
    assert f"--kubeconfig={stack.kubeconfig}" in proc.argv
    config = json.loads((tmp_path / "kueue-config.yaml").read_text())
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {"enable": False}
    assert config["webhook"]["host"] == "127.0.0.1"
    assert config["metrics"] == {"bindAddress": "0"}
    assert config["integrations"]["frameworks"] == ["batch/job"]
    # `tradewind dev up`, `status` and `down` without --kueue still know it runs.
    assert DevStack(StackConfig(dev_dir=tmp_path)).with_kueue
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "empty-cache"))
    assert devstack_kueue.missing_binaries(DevStack(StackConfig(dev_dir=tmp_path))) == [
        "kueue",
        "kueue-crds/kueue.x-k8s.io_workloads.yaml",
    ]
