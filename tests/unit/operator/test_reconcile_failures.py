"""reconcile() when the cluster says no: a child the apiserver refuses, pods the Job controller
cannot create, and children that belong to another run of the same name."""

import datetime as dt
from typing import Any

from tests.unit.operator.test_reconcile import NOW, RecordingKube, _body, _reconcile
from tradewind.operator import builders
from tradewind.operator.kube import Refused

INVALID = (
    'Job.batch "r-0" is invalid: spec.template.spec.volumes[2].persistentVolumeClaim.claimName:'
    " Required value"
)
QUOTA = (
    'jobs.batch "r-0" is forbidden: exceeded quota: q, requested: count/jobs.batch=1, '
    "used: count/jobs.batch=0, limited: count/jobs.batch=0"
)


def _conditions(decision: Any) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in decision.status.conditions}


def _events(kube: RecordingKube) -> list[Any]:
    return [c[1] for c in kube.calls if c[0] == "event"]


def _with_status(body: dict[str, Any], decision: Any) -> dict[str, Any]:
    body["status"] = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def test_an_invalid_job_fails_the_run_with_the_apiservers_message_and_one_event() -> None:
    kube = RecordingKube(refuse={"Job": Refused(422, INVALID, permanent=True)})
    decision = _reconcile(_body(), kube)
    conditions = _conditions(decision)
    assert decision.status.phase == "Failed"
    assert conditions["Failed"] == ("True", "CreateFailed", INVALID)
    assert conditions["Created"] == ("False", "CreateFailed", INVALID)
    assert conditions["Stalled"][:2] == ("True", "CreateFailed")
    assert _events(kube) == ["CreateFailed"]  # no "Created": nothing was
    assert not decision.retry and "create_attempt" not in decision.actions
    assert ("status", "Failed") in kube.calls


def test_a_quota_refusal_waits_pending_retries_with_backoff_and_says_it_once() -> None:
    refused = Refused(403, QUOTA, permanent=False, retry_after=None)
    kube = RecordingKube(refuse={"Job": refused})
    first = _reconcile(_body(), kube)
    assert first.status.phase == "Pending" and first.retry
    assert _conditions(first)["Ready"] == ("False", "CreateFailed", QUOTA)
    assert _conditions(first)["Created"][:2] == ("False", "CreateFailed")
    assert _events(kube) == ["CreateFailed"]
    # Retried: the same refusal writes nothing and posts nothing.
    kube = RecordingKube(refuse={"Job": refused})
    again = _reconcile(_with_status(_body(), first), kube)
    assert again.retry and _events(kube) == [] and not [c for c in kube.calls if c[0] == "status"]
    # The quota is raised: the Job is created, and the run says so.
    kube = RecordingKube()
    created = _reconcile(_with_status(_body(), again), kube)
    assert not created.retry and "create_attempt" in created.actions
    assert _conditions(created)["Created"][:2] == ("True", "AttemptCreated")
    assert _events(kube) == ["Created"]


def test_retry_after_from_the_apiserver_reaches_the_decision() -> None:
    refused = Refused(429, "too many requests", permanent=False, retry_after=7.0)
    decision = _reconcile(_body(), RecordingKube(refuse={"ConfigMap": refused}))
    assert decision.retry and decision.retry_after == 7.0


def _job(uid: str | None, attempt: str = "0", created: str | None = None) -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: attempt, builders.ROLE_LABEL: "train"}
    meta = {"name": f"r-{attempt}", "labels": labels, "uid": f"job-{attempt}", "owner": uid}
    meta["creationTimestamp"] = created
    return {"metadata": meta, "spec": {"completions": 2}, "status": {}}


def _pod(name: str, phase: str, uid: str) -> dict[str, Any]:
    labels = {builders.ATTEMPT_LABEL: "0", builders.ROLE_LABEL: "train"}
    labels[builders.RUN_UID_LABEL] = uid
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


def test_a_predecessors_job_and_pods_are_neither_counted_nor_deleted() -> None:
    # The run r (uid u-1) was created again; r-0 and its pods belong to the earlier r (u-0).
    old_pods = [_pod("r-0-0", "Succeeded", "u-0"), _pod("r-0-1", "Succeeded", "u-0")]
    old = [_job("u-0"), _job("u-0", attempt="3")]
    kube = RecordingKube()
    decision = _reconcile(_body(), kube, jobs=old, pods=old_pods)
    assert decision.status.phase == "Pending" and "create_attempt" in decision.actions
    assert not [c for c in kube.calls if c[0] == "delete"]


def test_a_stale_attempt_of_this_run_is_deleted_even_with_a_foreign_attempt_label() -> None:
    body = _body()
    body["status"] = {"attempt": 1, "restarts": 1, "phase": "Restarting"}
    odd = _job("u-1", attempt="x")  # someone's edit: no crash, no ConfigMap guessed
    kube = RecordingKube()
    _reconcile(body, kube, jobs=[_job("u-1"), odd])
    deletes = [c[1] for c in kube.calls if c[0] == "delete"]
    assert deletes == ["Job/r-0", "ConfigMap/r-0-config-u-1", "Job/r-x"]


def _pending(kube: RecordingKube, created: str) -> Any:
    body = _with_status(_body(), _reconcile(_body(), RecordingKube()))
    # as the worker asks: pod counts may wait; a refusal, with its Event, may not
    decision = _reconcile(
        body, kube, jobs=[_job("u-1", created=created)], pods=[], defer_counts=True
    )
    assert not decision.deferred
    return decision


def test_a_young_job_without_pods_is_looked_at_again_soon_not_asked_yet() -> None:
    kube = RecordingKube(pod_refusal="never asked")
    decision = _pending(kube, created=NOW.isoformat())
    assert not [c for c in kube.calls if c[0] == "events"]
    assert decision.recheck_seconds is not None and 0 < decision.recheck_seconds <= 5


def test_pods_refused_by_podsecurity_fail_the_run_and_delete_the_job() -> None:
    message = (
        'Error creating: pods "r-0-0-abcde" is forbidden: violates PodSecurity '
        '"restricted:latest": restricted volume types (volume "host" uses restricted volume '
        'type "hostPath")'
    )
    kube = RecordingKube(pod_refusal=message)
    decision = _pending(kube, created="2025-12-31T23:59:00+00:00")
    assert ("events", "job-0") in kube.calls
    assert decision.status.phase == "Failed"
    status, reason, text = _conditions(decision)["Failed"]
    assert (status, reason) == ("True", "PodsRefused") and message in text
    assert ("delete", "Job/r-0") in kube.calls
    assert _events(kube) == ["PodsRefused"]


def test_pods_refused_by_quota_keep_the_run_pending_with_the_reason_said_once() -> None:
    def refusal(pod: str) -> str:
        return f'Error creating: pods "{pod}" is forbidden: exceeded quota: q, requested: pods=1'

    kube = RecordingKube(pod_refusal=refusal("r-0-0-bcdfg"))
    decision = _pending(kube, created="2025-12-31T23:59:00+00:00")
    assert decision.status.phase == "Pending"
    status, reason, text = _conditions(decision)["Ready"]
    assert (status, reason) == ("False", "PodsRefused") and refusal("r-0-0-*") in text
    assert not [c for c in kube.calls if c[0] == "delete"]
    assert _events(kube) == ["PodsRefused"]
    # The Job controller tries again: another generated pod name, the same refusal.
    aggregated = "(combined from similar events): " + refusal("r-0-0-hjklm")
    kube = RecordingKube(pod_refusal=aggregated)
    body = _with_status(_body(), decision)
    job = _job("u-1", created="2025-12-31T23:59:00+00:00")
    _reconcile(body, kube, jobs=[job], pods=[], defer_counts=True)
    assert _events(kube) == [] and not [c for c in kube.calls if c[0] == "status"]


def test_an_rlrun_gets_no_service_and_its_own_names() -> None:
    body = _body()
    body["kind"] = "RLRun"
    body["spec"] = {"agents": [{"name": "ppo", "algorithm": "ppo"}]}

    class Names(RecordingKube):
        def create(self, manifest: dict[str, Any]) -> None:
            self.calls.append(("create", f"{manifest['kind']}/{manifest['metadata']['name']}"))

    kube = Names()
    _reconcile(body, kube)
    assert [c[1] for c in kube.calls if c[0] == "create"] == [
        "ConfigMap/r-rl0-config-u-1",
        "Job/r-rl0",
    ]


def _failed_job(failed_at: dt.datetime) -> dict[str, Any]:
    job = _job("u-1", created="2025-12-31T23:59:00+00:00")
    job["status"] = {"conditions": [{
        "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
        "lastTransitionTime": failed_at.isoformat(),
    }]}  # fmt: skip
    return job


def _oom_killed(name: str) -> dict[str, Any]:
    pod = _pod(name, "Failed", "u-1")
    terminated = {"exitCode": 137, "reason": "OOMKilled"}
    pod["status"]["containerStatuses"] = [{"state": {"terminated": terminated}}]
    return pod


def test_a_failed_job_waits_for_its_failed_pods_record_before_it_restarts_the_run() -> None:
    """The pods' watch can lag the Jobs': the Job is Failed (BackoffLimitExceeded) while the
    pods as seen still run. The pod's own record (here OOMKilled: not retried) decides."""
    body = _body()
    body["status"] = {"attempt": 0, "restarts": 0, "phase": "Running"}
    running = [_pod("r-0-0", "Running", "u-1"), _pod("r-0-1", "Running", "u-1")]
    kube = RecordingKube()
    waiting = _reconcile(body, kube, jobs=[_failed_job(NOW)], pods=running)
    assert waiting.status.phase == "Running" and waiting.status.restarts == 0
    assert not [c for c in kube.calls if c[0] == "delete"]
    assert waiting.recheck_seconds is not None and 0 < waiting.recheck_seconds <= 10
    seen = [_oom_killed("r-0-0"), _pod("r-0-1", "Running", "u-1")]
    failed = _reconcile(body, RecordingKube(), jobs=[_failed_job(NOW)], pods=seen)
    assert failed.status.phase == "Failed" and failed.status.restarts == 0
    assert _conditions(failed)["Failed"][1] == "OutOfMemory"


def test_a_failed_job_whose_pods_never_show_it_restarts_the_run_on_the_jobs_word() -> None:
    body = _body()
    body["status"] = {"attempt": 0, "restarts": 0, "phase": "Running"}
    job = _failed_job(NOW - dt.timedelta(seconds=60))
    decision = _reconcile(body, RecordingKube(), jobs=[job], pods=[])
    assert decision.status.phase == "Restarting" and decision.status.restarts == 1
    assert "BackoffLimitExceeded" in _conditions(decision)["Ready"][2]
