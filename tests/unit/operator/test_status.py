import datetime as dt
from typing import Any

import pytest

from tradewind.api import TrainingRun, parse_resource
from tradewind.api.status import RunStatus
from tradewind.operator.status import AttemptState, PodFailure, decide, observe_attempt

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _run(**spec: Any) -> TrainingRun:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": spec,
    }
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    return run


def _pod(
    name: str, phase: str, exit_code: int | None = None, reason: str = "Error"
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": exit_code, "reason": reason}}}
        ]
    return {"metadata": {"name": name}, "status": status}


JOB = {"metadata": {"name": "r-0"}, "spec": {"completions": 2}, "status": {}}


def test_no_attempt_creates_one_and_is_pending() -> None:
    d = decide(_run(nodes=2), RunStatus(), AttemptState(exists=False), NOW, 1)
    assert d.actions == ["create_attempt"] and d.status.phase == "Pending"
    assert {c.type for c in d.status.conditions} >= {"Created", "Ready"}


def test_all_pods_running_is_running_and_ready() -> None:
    state = observe_attempt(JOB, [_pod("a", "Running"), _pod("b", "Running")])
    d = decide(_run(nodes=2), RunStatus(phase="Pending"), state, NOW, 1)
    assert d.status.phase == "Running" and d.status.nodes_ready == 2 and d.status.start_time == NOW
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert ready.status == "True" and d.events[0][1] == "AllNodesRunning"


def test_failure_restarts_then_fails_at_max_restarts() -> None:
    state = observe_attempt(
        JOB, [_pod("r-0-0", "Failed", 137, "Evicted"), _pod("r-0-1", "Running")]
    )
    assert state.failure == PodFailure("r-0-0", 137, "Evicted", "")
    d = decide(_run(maxRestarts=1), RunStatus(phase="Running"), state, NOW, 1)
    assert d.status.phase == "Restarting" and d.status.attempt == 1 and d.status.restarts == 1
    assert "pod r-0-0 failed with exit code 137 (Evicted)" in d.events[0][2]
    d2 = decide(_run(maxRestarts=1), d.status, state, NOW, 1)
    assert d2.status.phase == "Failed" and d2.status.completion_time == NOW
    failed = next(c for c in d2.status.conditions if c.type == "Failed")
    assert failed.reason == "MaxRestartsReached"


def test_permanent_exit_codes_are_not_retried() -> None:
    permanent = ((64, "InvalidConfig"), (65, "NonFiniteLoss"), (66, "DataNotFound"),
                 (67, "OutOfMemory"))  # fmt: skip
    for code, reason in permanent:
        state = observe_attempt(JOB, [_pod("r-0-0", "Failed", code)])
        d = decide(_run(maxRestarts=5), RunStatus(phase="Running"), state, NOW, 1)
        assert d.status.phase == "Failed" and d.status.restarts == 0
        assert d.actions == []
        assert next(c for c in d.status.conditions if c.type == "Failed").reason == reason


def test_a_pod_the_kubelet_oomkilled_fails_the_run_as_out_of_memory() -> None:
    state = observe_attempt(JOB, [_pod("r-0-0", "Failed", 137, "OOMKilled")])
    d = decide(_run(maxRestarts=5), RunStatus(phase="Running"), state, NOW, 1)
    assert d.status.phase == "Failed" and d.status.restarts == 0 and d.actions == []
    failed = next(c for c in d.status.conditions if c.type == "Failed")
    assert failed.reason == "OutOfMemory"
    assert "exit code 137 (OOMKilled)" in failed.message and "not retried" in failed.message


def test_a_permanent_failure_says_what_the_trainer_wrote_in_its_termination_message() -> None:
    said = "error: train_loss=nan in epoch 3: training diverged"
    pod = _pod("r-0-0", "Failed", 65)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said
    d = decide(_run(), RunStatus(phase="Running"), observe_attempt(JOB, [pod]), NOW, 1)
    failed = next(c for c in d.status.conditions if c.type == "Failed")
    assert failed.reason == "NonFiniteLoss"
    assert said in failed.message and "not retried" in failed.message


def test_suspend_and_resume() -> None:
    running = observe_attempt(JOB, [_pod("a", "Running")])
    d = decide(_run(suspend=True), RunStatus(phase="Running"), running, NOW, 2)
    assert d.actions == ["suspend_job"] and d.status.phase == "Suspended"
    suspended = AttemptState(exists=True, suspended=True, suspended_by_run=True, total=1)
    d2 = decide(_run(), d.status, suspended, NOW, 3)
    assert d2.actions == ["resume_job"]
    # A Job suspended by something else (Kueue, another controller) is not resumed.
    held = AttemptState(exists=True, suspended=True, suspended_by_run=False, total=1)
    d3 = decide(_run(), d.status, held, NOW, 3)
    assert d3.actions == [] and d3.status.phase == "Pending"
    queued = _run()
    queued.metadata.labels = {"kueue.x-k8s.io/queue-name": "q"}
    by_kueue = AttemptState(exists=True, suspended=True, total=1)
    d4 = decide(queued, RunStatus(phase="Pending"), by_kueue, NOW, 3)
    ready = next(c for c in d4.status.conditions if c.type == "Ready")
    assert d4.actions == [] and ready.reason == "WaitingForQuota"


def test_deadline_and_ttl() -> None:
    started = RunStatus(phase="Running", start_time=NOW - dt.timedelta(seconds=61))
    d = decide(
        _run(activeDeadlineSeconds=60),
        started,
        AttemptState(exists=True, total=1, running=1),
        NOW,
        1,
    )
    assert d.status.phase == "Failed" and d.actions == ["delete_attempt"]
    done = RunStatus(phase="Succeeded", completion_time=NOW - dt.timedelta(seconds=11))
    assert decide(
        _run(ttlSecondsAfterFinished=10), done, AttemptState(exists=True), NOW, 1
    ).actions == ["delete_run"]
    assert (
        decide(_run(ttlSecondsAfterFinished=60), done, AttemptState(exists=True), NOW, 1).actions
        == []
    )


def test_image_pull_failures_are_named() -> None:
    pod = _pod("r-0-0", "Pending")
    pod["status"]["containerStatuses"] = [
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    ]
    d = decide(_run(), RunStatus(phase="Pending"), observe_attempt(JOB, [pod]), NOW, 1)
    ready = next(c for c in d.status.conditions if c.type == "Ready")
    assert ready.reason == "ImagePullFailure" and "pod r-0-0: ImagePullBackOff" in ready.message


def test_condition_transition_time_moves_only_on_a_flip() -> None:
    state = observe_attempt(JOB, [_pod("a", "Running"), _pod("b", "Running")])
    first = decide(_run(nodes=2), RunStatus(phase="Pending"), state, NOW, 1).status
    later = decide(_run(nodes=2), first, state, NOW + dt.timedelta(minutes=5), 1).status
    ready = next(c for c in later.conditions if c.type == "Ready")
    assert ready.last_transition_time == NOW


def _condition(status: RunStatus, type_: str) -> tuple[str, str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status, c.reason, c.message


def _in_each_phase() -> dict[str, RunStatus]:
    """A status in each phase, as decide() writes it."""
    running = observe_attempt(JOB, [_pod("a", "Running"), _pod("b", "Running")])
    oom = observe_attempt(JOB, [_pod("r-0-0", "Failed", 137, "Error")])
    done = {**JOB, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pending = decide(_run(nodes=2), RunStatus(), AttemptState(exists=False), NOW, 1).status
    restarting = decide(_run(maxRestarts=1), RunStatus(phase="Running"), oom, NOW, 1).status
    return {
        "Pending": pending,
        "Running": decide(_run(nodes=2), pending, running, NOW, 1).status,
        "Restarting": restarting,
        "Suspended": decide(_run(suspend=True), pending, running, NOW, 1).status,
        "Succeeded": decide(_run(nodes=2), pending, observe_attempt(done, []), NOW, 1).status,
        "Failed": decide(_run(maxRestarts=1), restarting, oom, NOW, 1).status,
    }


@pytest.mark.parametrize(
    ("phase", "reconciling", "stalled"),
    [
        ("Pending", "True", "False"),
        ("Running", "True", "False"),
        ("Restarting", "True", "False"),
        ("Suspended", "False", "False"),
        ("Succeeded", "False", "False"),
        ("Failed", "False", "True"),
    ],
)
def test_each_phase_sets_the_kstatus_conditions(phase: str, reconciling: str, stalled: str) -> None:
    """kstatus reads Reconciling=True as in progress and Stalled=True as failed; both False
    (never absent) once a status is written."""
    status = _in_each_phase()[phase]
    assert status.phase == phase
    ready = _condition(status, "Ready")
    assert _condition(status, "Reconciling") == (reconciling, phase, ready[2])
    if phase == "Failed":  # the Failed condition's reason and message
        assert _condition(status, "Stalled") == ("True", *_condition(status, "Failed")[1:])
        assert _condition(status, "Stalled")[1] == "MaxRestartsReached"
    else:
        assert _condition(status, "Stalled") == (stalled, phase, ready[2])


def test_the_other_conditions_keep_their_meaning() -> None:
    """Ready, Created and one condition per phase reached, as before."""
    for phase, status in _in_each_phase().items():
        assert _condition(status, "Ready")[0] == str(phase in ("Running", "Succeeded"))
        if phase != "Pending":
            assert _condition(status, phase)[0] == "True"
        others = {c.type for c in status.conditions if c.status == "True"}
        others -= {"Created", "Ready", "Reconciling", "Stalled"}
        assert others == ({phase} if phase != "Pending" else set())


def test_the_kstatus_conditions_move_only_with_the_phase() -> None:
    """A reconcile that changes nothing changes no condition (no status write); going from
    Pending to Running keeps Reconciling's lastTransitionTime; finishing flips it."""
    statuses = _in_each_phase()
    pending, running_state = (
        statuses["Pending"],
        observe_attempt(JOB, [_pod("a", "Running"), _pod("b", "Running")]),
    )
    later = NOW + dt.timedelta(minutes=5)
    running = decide(_run(nodes=2), pending, running_state, later, 1).status
    assert decide(_run(nodes=2), running, running_state, later, 1).status == running
    reconciling = next(c for c in running.conditions if c.type == "Reconciling")
    assert reconciling.last_transition_time == NOW
    stalled = next(c for c in running.conditions if c.type == "Stalled")
    assert stalled.last_transition_time == NOW
    done = {**JOB, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    finished = decide(
        _run(nodes=2), running, observe_attempt(done, []), later + dt.timedelta(hours=1), 1
    ).status
    reconciling = next(c for c in finished.conditions if c.type == "Reconciling")
    assert reconciling.status == "False"
    assert reconciling.last_transition_time == later + dt.timedelta(hours=1)
    stalled = next(c for c in finished.conditions if c.type == "Stalled")
    assert stalled.status == "False" and stalled.last_transition_time == NOW
    assert decide(_run(nodes=2), finished, observe_attempt(done, []), later, 1).status == finished
