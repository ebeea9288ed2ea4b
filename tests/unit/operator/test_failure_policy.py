"""Failure semantics of decide(): exit codes from spec.failurePolicy, disruptions that restart
without counting against maxRestarts, the scheduling timeout, and activeDeadlineSeconds from
the first Job's start (docs/failures.md)."""

import datetime as dt
from typing import Any

import pytest

from tests.unit.operator.test_status import JOB, NOW, _pod, _run
from tradewind.api.common import TRAINER_PERMANENT_EXIT_CODES, FailurePolicy
from tradewind.api.manifest import ManifestError
from tradewind.api.status import RunStatus
from tradewind.operator import observed
from tradewind.operator.status import (
    PERMANENT_EXIT_CODES,
    AttemptState,
    Decision,
    decide,
    observe_attempt,
)


def _failed(
    code: int, reason: str = "Error", **spec: Any
) -> tuple[Decision, dict[str, tuple[str, str, str]]]:
    state = observe_attempt(JOB, [_pod("r-0-0", "Failed", code, reason), _pod("r-0-1", "Running")])
    d = decide(_run(maxRestarts=3, **spec), RunStatus(phase="Running"), state, NOW, 1)
    return d, {c.type: (c.status, c.reason, c.message) for c in d.status.conditions}


def test_the_trainers_codes_are_the_default_permanent_ones() -> None:
    assert FailurePolicy().permanent_exit_codes == list(TRAINER_PERMANENT_EXIT_CODES)
    assert set(PERMANENT_EXIT_CODES) == set(TRAINER_PERMANENT_EXIT_CODES)


def test_a_permanent_code_of_ones_own_fails_at_once_as_permanent_exit_code() -> None:
    policy = {"permanentExitCodes": [3, 64]}
    d, conditions = _failed(3, failurePolicy=policy)
    assert d.status.phase == "Failed" and d.status.restarts == 0
    assert conditions["Failed"][1] == "PermanentExitCode"
    assert "exit code 3" in conditions["Failed"][2] and "not retried" in conditions["Failed"][2]
    assert _failed(64, failurePolicy=policy)[1]["Failed"][1] == "InvalidConfig"  # its name kept
    assert _failed(3)[0].status.phase == "Restarting"  # not permanent by default


def test_codes_the_trainer_gives_meaning_to_are_retried_when_the_list_leaves_them_out() -> None:
    d, _ = _failed(65, failurePolicy={"permanentExitCodes": []})
    assert d.status.phase == "Restarting" and d.status.restarts == 1


def test_a_retryable_list_makes_every_other_code_permanent() -> None:
    policy = {"retryableExitCodes": [1, 137]}
    restarted, _ = _failed(1, failurePolicy=policy)
    assert restarted.status.phase == "Restarting" and restarted.status.restarts == 1
    failed, conditions = _failed(2, failurePolicy=policy)
    assert failed.status.phase == "Failed" and conditions["Failed"][1] == "PermanentExitCode"
    # OOMKilled is permanent unless 137 is retryable
    oom, _ = _failed(137, "OOMKilled", failurePolicy=policy)
    assert oom.status.phase == "Restarting"
    assert _failed(137, "OOMKilled")[1]["Failed"][1] == "OutOfMemory"


@pytest.mark.parametrize(
    ("policy", "said"),
    [
        ({"retryableExitCodes": [64]}, "both permanent and retryable"),
        ({"permanentExitCodes": [1], "retryableExitCodes": [2, 1]}, "both permanent and retryable"),
        ({"permanentExitCodes": [5, 5]}, "must not repeat"),
        ({"retryableExitCodes": [7, 7]}, "must not repeat"),
        ({"permanentExitCodes": [0]}, "greater than or equal to 1"),
        ({"retryableExitCodes": [256]}, "less than or equal to 255"),
    ],
)
def test_an_inconsistent_failure_policy_is_refused(policy: dict[str, Any], said: str) -> None:
    with pytest.raises(ManifestError, match=said):
        _run(failurePolicy=policy)


def _disrupted(pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    condition = {"type": "DisruptionTarget", "status": "True", "reason": reason,
                 "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}, condition]
    return pod


def test_a_disrupted_pod_restarts_the_attempt_without_counting_a_restart() -> None:
    pod = _pod("r-0-1", "Running")
    evicted = _disrupted(pod, "EvictionByEvictionAPI", "Eviction API: evicting")
    kept = observed.pod(evicted)  # as the index keeps it: that condition only
    assert [c["type"] for c in kept["status"]["conditions"]] == ["DisruptionTarget"]
    # its peer lost it and failed: the disruption is the cause
    state = observe_attempt(JOB, [_pod("r-0-0", "Failed", 1), kept])
    status = RunStatus(phase="Running", attempt=3, restarts=2, last_failed_attempt=2)
    d = decide(_run(maxRestarts=2), status, state, NOW, 1)
    s = d.status
    assert (s.phase, s.attempt, s.restarts, s.disruptions) == ("Restarting", 4, 2, 1)
    assert s.last_failed_attempt == 2  # the crash before stays the one kept for logs
    restarting = next(c for c in s.conditions if c.type == "Restarting")
    assert restarting.reason == "Disrupted"
    assert "pod r-0-1 disrupted (EvictionByEvictionAPI): Eviction API: evicting" in (
        restarting.message
    )
    assert d.events[0][:2] == ("Warning", "Disrupted")


def test_a_pod_the_kubelet_evicted_for_node_pressure_is_a_disruption_not_for_its_limits() -> None:
    def evicted(message: str) -> AttemptState:
        pod = _pod("r-0-0", "Failed", 137)
        pod["status"] |= {"reason": "Evicted", "message": message}
        return observe_attempt(JOB, [pod])

    node = evicted("The node was low on resource: memory. ")
    d = decide(_run(maxRestarts=0), RunStatus(phase="Running"), node, NOW, 1)
    assert d.status.phase == "Restarting" and d.status.disruptions == 1
    own = evicted("Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.")
    d = decide(_run(maxRestarts=0), RunStatus(phase="Running"), own, NOW, 1)
    assert d.status.phase == "Failed" and d.status.disruptions == 0


def test_a_pod_that_had_succeeded_is_not_disrupted_by_its_removal() -> None:
    done = _disrupted(_pod("r-0-0", "Succeeded"), "DeletionByPodGC", "node gone")
    state = observe_attempt(JOB, [done, _pod("r-0-1", "Running")])
    d = decide(_run(nodes=2), RunStatus(phase="Running"), state, NOW, 1)
    assert d.status.phase == "Running" and d.status.attempt == 0


def _pending(started: dt.datetime | None, running: int = 1) -> AttemptState:
    job = {**JOB, "status": {"startTime": started.isoformat() if started else None}}
    pods = [_pod("r-0-0", "Running" if running else "Pending"), _pod("r-0-1", "Pending")]
    return observe_attempt(observed.job({**job, "metadata": {"name": "r-0"}}), pods)


def test_an_attempt_not_placed_within_the_scheduling_timeout_is_restarted() -> None:
    run = _run(nodes=2, schedulingTimeoutSeconds=60, maxRestarts=1)
    pending = RunStatus(phase="Pending")
    early = decide(run, pending, _pending(NOW - dt.timedelta(seconds=50)), NOW, 1)
    assert early.status.phase == "Pending" and early.actions == []
    assert early.recheck_seconds is not None and 10 <= early.recheck_seconds <= 11
    late = decide(run, pending, _pending(NOW - dt.timedelta(seconds=61)), NOW, 1)
    s = late.status
    assert (s.phase, s.attempt, s.restarts) == ("Restarting", 1, 1)
    assert "delete_attempt" in late.actions and s.last_failed_attempt is None  # its Job goes
    restarting = next(c for c in s.conditions if c.type == "Restarting")
    assert restarting.reason == "SchedulingTimeout"
    assert "1/2 pods of attempt 0 running schedulingTimeoutSeconds=60" in restarting.message
    # no restart left: Failed, and its pending pods deleted
    again = decide(run, s.model_copy(update={"attempt": 0}), _pending(NOW - dt.timedelta(1)),
                   NOW, 1)  # fmt: skip
    assert again.status.phase == "Failed" and again.actions == ["delete_attempt"]
    assert "schedulingTimeoutSeconds=60" in next(
        c.message for c in again.status.conditions if c.type == "Failed"
    )


def test_time_queued_before_the_job_starts_counts_for_no_timeout() -> None:
    run = _run(nodes=2, schedulingTimeoutSeconds=60, activeDeadlineSeconds=60)
    d = decide(run, RunStatus(phase="Pending"), _pending(None, running=0), NOW, 1)
    assert d.status.phase == "Pending" and d.status.start_time is None
    assert d.recheck_seconds is None


def test_the_deadline_counts_from_the_jobs_start_even_while_no_pod_runs() -> None:
    run = _run(nodes=2, activeDeadlineSeconds=60)
    started = NOW - dt.timedelta(seconds=30)
    d = decide(run, RunStatus(phase="Pending"), _pending(started, running=0), NOW, 1)
    assert d.status.start_time == started and d.status.phase == "Pending"
    later = NOW + dt.timedelta(seconds=31)
    stuck = decide(run, d.status, _pending(started, running=0), later, 1)
    assert stuck.status.phase == "Failed" and stuck.actions == ["delete_attempt"]
    assert next(c for c in stuck.status.conditions if c.type == "Failed").reason == (
        "DeadlineExceeded"
    )
    # a later attempt's Job does not move the start
    restarted = d.status.model_copy(update={"attempt": 1})
    second = decide(run, restarted, _pending(NOW, running=0), NOW, 1)
    assert second.status.start_time == started


def test_the_index_keeps_the_jobs_start_time() -> None:
    body = {"metadata": {"name": "r-0", "labels": {}}, "spec": {"completions": 2},
            "status": {"startTime": "2026-01-01T00:00:00Z", "active": 2}}  # fmt: skip
    assert observed.job(body)["status"]["startTime"] == "2026-01-01T00:00:00Z"
    assert observe_attempt(observed.job(body), []).started == NOW
