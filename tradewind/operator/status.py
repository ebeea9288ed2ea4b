"""Pure status logic: (run, its status, the observed attempt, now) -> the new status, what to
do, and the Events to post. Unit-tested without a cluster; `reconcile` applies it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from tradewind.api.status import Condition, RunStatus, SweepStatus
from tradewind.operator import failures, kueue
from tradewind.operator.builders import Run, shape
from tradewind.operator.generations import spec_hash

PERMANENT_EXIT_CODES = failures.TRAINER_EXIT_REASONS
"""Trainer exit codes that no restart can fix (see tradewind.trainer.entrypoint): the spec
cannot run, the loss became NaN or infinite, the data is not there, out of memory (as is a
container the kubelet OOMKilled). The default of spec.failurePolicy.permanentExitCodes."""
IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}
TERMINAL = ("Succeeded", "Failed")
JOB_FAILED_BY_A_POD = ("BackoffLimitExceeded", "PodFailurePolicy")
"""A Job's Failed reasons that mean a pod of it failed: that pod's own record says how."""
RECONCILING = ("Pending", "Running", "Restarting")
"""Phases of a resource working toward a terminal one (kstatus: Reconciling is True)."""

Action = Literal[
    "create_attempt", "create_combine", "delete_attempt", "suspend_job", "resume_job", "delete_run"
]


@dataclass(frozen=True)
class PodFailure:
    pod: str
    exit_code: int | None
    reason: str
    message: str
    disrupted: bool = False
    """The cluster stopped the pod (its DisruptionTarget condition, a kubelet eviction):
    `reason` and `message` are the condition's."""

    def describe(self) -> str:
        detail = f": {self.message}" if self.message else ""
        if self.disrupted:
            return f"pod {self.pod} disrupted ({self.reason}){detail}"
        code = f" with exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"pod {self.pod} failed{code} ({self.reason}){detail}"


@dataclass(frozen=True)
class AttemptState:
    """What the cluster shows of the current attempt."""

    exists: bool
    started: dt.datetime | None = None
    """When the Job controller started the Job (its status.startTime: unset while the Job
    is suspended, e.g. queued by Kueue)."""
    suspended: bool = False
    succeeded: bool = False
    failure: PodFailure | None = None
    failure_unexplained_since: dt.datetime | None = None
    """When the Job failed for a pod's failure that none of the pods as seen shows yet (the
    pods' watch can lag the Jobs'): `failure` is then only the Job's word for it."""
    running: int = 0
    total: int = 0
    waiting: str = ""
    """Why pods wait, e.g. `pod x: ImagePullBackOff: ...`."""
    refused: str = ""
    """Why the Job has fewer pods than it should: the apiserver refused them (the Job
    controller's FailedCreate Event: PodSecurity, quota, an invalid pod)."""
    suspended_by_run: bool | None = None
    """Whether the operator suspended the Job for the run's spec.suspend (its
    SUSPENDED_BY_RUN_LABEL); None if the Job has no such label (an older operator's)."""
    admission: str = ""
    """What Kueue says of a queued run's suspended Job (its Workload's message, e.g.
    "couldn't assign flavors ... insufficient quota"), if read."""


PERMANENT_POD_REFUSALS = ("violates PodSecurity", " is invalid")
"""Pod refusals that the same pod template meets again: PodSecurity admission, validation.
Others (quota, a webhook that is down) may pass later."""
MESSAGE_LIMIT = 1024
"""An apiserver message is cut to this length in conditions (and Events)."""


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode", 0) != 0:
            return dict(state["terminated"])
    return None


def observe_attempt(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> AttemptState:
    """Summarise the Job of the current attempt and its pods."""
    if job is None:
        return AttemptState(exists=False)
    conditions = {
        c["type"]: c
        for c in job.get("status", {}).get("conditions") or []
        if c.get("status") == "True"
    }
    failure = disrupted = None
    waiting = ""
    running = 0
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        phase = pod.get("status", {}).get("phase")
        term = _terminated(pod)
        found = failures.disruption(pod)
        if found is not None and disrupted is None:
            disrupted = PodFailure(name, (term or {}).get("exitCode"), *found, disrupted=True)
        if (phase == "Failed" or term) and failure is None:
            term = term or {}
            reason = term.get("reason") or pod["status"].get("reason") or "Error"
            message = term.get("message") or pod["status"].get("message") or ""
            failure = PodFailure(name, term.get("exitCode"), reason, message)
        if phase in ("Running", "Succeeded"):  # a finished node stays counted while others run
            running += 1
        for status in pod.get("status", {}).get("containerStatuses") or []:
            wait = (status.get("state") or {}).get("waiting") or {}
            if wait.get("reason") in IMAGE_PULL_REASONS:
                waiting = f"pod {name}: {wait['reason']}: {wait.get('message', '')}".strip()
    # A disruption explains the other pods' failures (their peer went away): it comes first.
    failure = disrupted or failure
    unexplained_since = None
    if failure is None and "Failed" in conditions:
        cond = conditions["Failed"]
        failure = PodFailure(
            job["metadata"]["name"], None, cond.get("reason", "JobFailed"), cond.get("message", "")
        )
        if failure.reason in JOB_FAILED_BY_A_POD:
            unexplained_since = _timestamp(cond.get("lastTransitionTime"))
    return AttemptState(
        exists=True,
        started=_timestamp(job.get("status", {}).get("startTime")),
        suspended=bool(job.get("spec", {}).get("suspend")),
        suspended_by_run=_suspended_by_run(job),
        succeeded="Complete" in conditions or "SuccessCriteriaMet" in conditions,
        failure=failure,
        failure_unexplained_since=unexplained_since,
        running=running,
        total=int(job.get("spec", {}).get("completions") or 0),
        waiting=waiting,
    )


def _timestamp(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _suspended_by_run(job: dict[str, Any]) -> bool | None:
    label = (job["metadata"].get("labels") or {}).get(kueue.SUSPENDED_BY_RUN_LABEL)
    return None if label is None else label == "true"


@dataclass
class Decision:
    status: RunStatus
    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type Normal|Warning, reason, message) per transition."""
    written_version: str | None = None
    """resourceVersion of the status write, once applied."""
    deferred: bool = False
    """The new status only moved pod counts on and was not written yet."""
    retry: bool = False
    """A child was refused and retrying may help: the worker reconciles again with backoff."""
    retry_after: float | None = None
    """The apiserver's Retry-After for that refusal, in seconds."""
    recheck_seconds: float | None = None
    """Reconcile again within this many seconds even if no event comes (a Job whose pods
    have not appeared yet is asked why once it is a few seconds old)."""


def set_condition(
    status: RunStatus | SweepStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int,
) -> None:
    """Add or update a condition; lastTransitionTime moves only when its status flips."""
    new = "True" if value else "False"
    since = now
    for cond in status.conditions:
        if cond.type == type_ and cond.status == new:
            since = cond.last_transition_time or now
    condition = Condition(
        type=type_,
        status=new,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    position = next((i for i, c in enumerate(status.conditions) if c.type == type_), None)
    if position is None:
        status.conditions.append(condition)
    else:
        status.conditions[position] = condition


def kstatus_conditions(phase: str, reason: str, message: str) -> list[tuple[str, bool, str, str]]:
    """The kstatus conditions of a phase, as (type, value, reason, message): the standard that
    Flux's health checks and kstatus-based tools (sigs.k8s.io/cli-utils) read. `Reconciling` is
    True while the resource works toward a terminal phase (reason: the phase); `Stalled` is True
    once it failed (the Failed condition's reason and message). Both are "abnormal-true": False
    otherwise — Succeeded and Suspended have neither, so kstatus falls back to `Ready`. Derived
    from the phase and its message alone, so they change only when the other conditions do."""
    stalled = phase == "Failed"
    return [
        ("Reconciling", phase in RECONCILING, phase, message),
        ("Stalled", stalled, reason if stalled else phase, message),
    ]


def _phase(
    decision: Decision,
    phase: str,
    reason: str,
    message: str,
    now: dt.datetime,
    gen: int,
    event: bool = True,
) -> None:
    """Move to `phase`, keeping the conditions in step and posting an Event on a change
    (unless the caller posts one that says it)."""
    status = decision.status
    if status.phase != phase and event:
        kind = "Warning" if phase in ("Failed", "Restarting") else "Normal"
        decision.events.append((kind, reason, message))
    status.phase = phase  # type: ignore[assignment]
    for cond in ("Running", "Restarting", "Suspended", "Succeeded", "Failed"):
        if cond == phase:
            set_condition(status, cond, True, reason, message, now, gen)
        elif any(c.type == cond for c in status.conditions):
            set_condition(status, cond, False, reason, message, now, gen)
    ready = phase in ("Running", "Succeeded")
    set_condition(status, "Ready", ready, reason, message, now, gen)
    for type_, value, why, text in kstatus_conditions(phase, reason, message):
        set_condition(status, type_, value, why, text, now, gen)
    if phase in TERMINAL and status.completion_time is None:
        status.completion_time = now


def decide(
    run: Run, status: RunStatus, attempt: AttemptState, now: dt.datetime, generation: int
) -> Decision:
    """The next status of a run and the actions that converge the cluster to it."""
    d = Decision(status=status.model_copy(deep=True))
    s = d.status
    current, latest = spec_hash(run), generation
    # From here `generation` is the one the current attempt's pods run (docs/failures.md).
    generation = _track(s, attempt, current, latest)
    s.nodes_total = shape(run)[0]
    s.nodes_ready = attempt.running if attempt.exists else 0
    if s.phase in TERMINAL:
        ttl = run.spec.ttl_seconds_after_finished
        if (
            ttl is not None
            and s.completion_time
            and now >= s.completion_time + dt.timedelta(seconds=ttl)
        ):
            d.actions.append("delete_run")
    elif run.spec.suspend:
        _suspend(run, d, attempt, now, generation)
    elif _past_deadline(run, s, now):
        d.actions += ["delete_attempt"] if attempt.exists else []
        message = f"active for more than activeDeadlineSeconds={run.spec.active_deadline_seconds}"
        _phase(d, "Failed", "DeadlineExceeded", message, now, generation)
    elif _spec_changed(s, attempt, current):
        _roll(d, latest, now, generation)
    elif not attempt.exists:
        s.attempt_spec_hash = current
        _create(d, now, latest)
    else:
        if not any(c.type == "Created" for c in s.conditions):  # e.g. the operator died
            set_condition(
                s,
                "Created",
                True,
                "AttemptCreated",
                f"attempt {s.attempt} created",
                now,
                generation,
            )
        if attempt.suspended and not attempt.succeeded:
            _suspended_job(run, d, status, attempt, now, generation)
        else:
            _progress(run, d, attempt, now, generation)
        _admitted_condition(run, d, attempt, now, generation)
    return d


def _suspend(run: Run, d: Decision, attempt: AttemptState, now: dt.datetime, gen: int) -> None:
    """spec.suspend: the Job is suspended (its pods deleted), or for a queued run deleted:
    Kueue un-suspends a Job it admitted, so the Job goes, its quota with it, and a resume
    creates it again, queued."""
    message = "spec.suspend is true: pods deleted, state kept"
    queued = kueue.queue_name(run) is not None
    if queued:
        d.actions += ["delete_attempt"] if attempt.exists else []
        message = "spec.suspend is true: the Job deleted (its Kueue quota released), state kept"
    elif attempt.exists and not attempt.suspended:
        d.actions.append("suspend_job")
    _phase(d, "Suspended", "Suspended", message, now, gen)
    if queued:
        set_condition(d.status, kueue.ADMITTED_CONDITION, False, "Suspended", message, now, gen)


def _suspended_job(
    run: Run, d: Decision, before: RunStatus, attempt: AttemptState, now: dt.datetime, gen: int
) -> None:
    """The Job is suspended while the run is not. Resumed only if the operator suspended it
    for the run's spec.suspend (its label says so; a Job without the label, of an older
    operator, if the run was Suspended and is not queued); otherwise Kueue, or another
    controller, holds it: the run waits and says so, and the Job is left alone. Its pods
    that end meanwhile were stopped by the suspension (Kueue preempting it): no restart."""
    queue = kueue.queue_name(run)
    ours = attempt.suspended_by_run
    if ours or (ours is None and queue is None and before.phase == "Suspended"):
        d.actions.append("resume_job")
        _progress(run, d, attempt, now, gen)
        return
    s = d.status
    if queue is not None:
        reason = kueue.WAITING_REASON
        message = kueue.waiting_message(queue, s.attempt, attempt.admission)
    else:
        reason, message = "JobSuspended", kueue.suspended_elsewhere_message(s.attempt)
    ready = next((c for c in before.conditions if c.type == "Ready"), None)
    if ready is None or ready.reason != reason:
        d.events.append(("Normal", reason, message[:MESSAGE_LIMIT]))
    phase = "Restarting" if s.phase == "Restarting" else "Pending"
    _phase(d, phase, reason, message[:MESSAGE_LIMIT], now, gen, event=False)


def _admitted_condition(
    run: Run, d: Decision, attempt: AttemptState, now: dt.datetime, gen: int
) -> None:
    """A queued run's Admitted condition: whether Kueue admitted (un-suspended) the Job of
    its current attempt."""
    s, queue = d.status, kueue.queue_name(run)
    if queue is None or s.phase in TERMINAL:
        return
    ready = next((c for c in s.conditions if c.type == "Ready"), None)
    if ready is not None and ready.reason == kueue.WAITING_REASON:
        set_condition(s, kueue.ADMITTED_CONDITION, False, ready.reason, ready.message, now, gen)
    elif not attempt.suspended:
        message = f"Kueue admitted the Job of attempt {s.attempt} (LocalQueue {queue})"
        set_condition(s, kueue.ADMITTED_CONDITION, True, "Admitted", message, now, gen)


def _track(s: RunStatus, attempt: AttemptState, current: str, latest: int) -> int:
    """Keep in `s` when the first attempt's Job started and which spec the attempt runs;
    return (and set) observedGeneration: the latest generation if the spec (less its
    lifecycle fields) is the one the attempt was created from, or no attempt runs; else the
    generation observed before. A finished run starts no attempt: it observes every change."""
    if s.phase in TERMINAL:
        s.observed_generation = latest
        return latest
    s.start_time = s.start_time or attempt.started
    if s.attempt_spec_hash is None and attempt.exists:
        s.attempt_spec_hash = current  # an older operator's attempt: taken as it is
    if s.attempt_spec_hash in (None, current) or s.observed_generation is None:
        s.observed_generation = latest
    return s.observed_generation


def _spec_changed(s: RunStatus, attempt: AttemptState, current: str) -> bool:
    """Whether the attempt runs another spec than the run's, and is not over yet."""
    return (
        attempt.exists
        and not attempt.succeeded
        and attempt.failure is None
        and s.attempt_spec_hash not in (None, current)
    )


def _roll(d: Decision, latest: int, now: dt.datetime, gen: int) -> None:
    """The spec changed under a running (or pending, or held) attempt: a new attempt with
    it, from the latest checkpoint, not counted against maxRestarts."""
    s = d.status
    message = (
        f"the spec changed (generation {latest}; attempt {s.attempt}'s pods run generation "
        f"{gen}): starting attempt {s.attempt + 1} from the latest checkpoint with it "
        "(not counted against maxRestarts)"
    )
    d.events.append(("Normal", "SpecChanged", message))
    s.attempt += 1
    _phase(d, "Restarting", "SpecChanged", message, now, gen, event=False)


def _past_deadline(run: Run, s: RunStatus, now: dt.datetime) -> bool:
    deadline = run.spec.active_deadline_seconds
    return bool(deadline and s.start_time and now >= s.start_time + dt.timedelta(seconds=deadline))


def _create(d: Decision, now: dt.datetime, gen: int) -> None:
    """Create the attempt from the current spec: `gen`, the latest generation, is observed
    (conditions set before, e.g. Restarting for a spec change, are restamped with it)."""
    s = d.status
    d.actions.append("create_attempt")
    s.observed_generation = gen
    for condition in s.conditions:
        condition.observed_generation = gen
    # True once per run (a refused create leaves it False: the next try says it again)
    created = not any(c.type == "Created" and c.status == "True" for c in s.conditions)
    if created:
        set_condition(
            s, "Created", True, "AttemptCreated", f"attempt {s.attempt} created", now, gen
        )
        d.events.append(
            ("Normal", "Created", f"attempt {s.attempt}: its ConfigMap and Job created")
        )
    if s.phase != "Restarting":  # the Created Event says it: no second one for Pending
        message = f"waiting for {s.nodes_total} pod(s) of attempt {s.attempt}"
        _phase(d, "Pending", "AttemptCreated", message, now, gen, event=not created)


def _progress(run: Run, d: Decision, attempt: AttemptState, now: dt.datetime, gen: int) -> None:
    """An attempt exists: has it succeeded, failed, or how far is it?"""
    s = d.status
    counts = f"{attempt.running}/{attempt.total} pods running (attempt {s.attempt})"
    if attempt.succeeded:
        message = f"attempt {s.attempt} completed on {s.nodes_total} node(s)"
        s.progress.percent = 100
        _phase(d, "Succeeded", "Completed", message, now, gen)
    elif attempt.failure is not None:
        _on_failure(run, d, attempt.failure, now, gen)
    elif attempt.refused:
        _pods_refused(d, attempt.refused, now, gen)
    elif _scheduling_due(run, s, attempt, d, now):
        _scheduling_timeout(run, d, attempt, now, gen)
    elif attempt.total > 0 and attempt.running == attempt.total:
        s.start_time = s.start_time or now
        _phase(d, "Running", "AllNodesRunning", counts, now, gen)
    elif attempt.waiting:
        _phase(
            d,
            s.phase if s.phase == "Restarting" else "Pending",
            "ImagePullFailure",
            attempt.waiting,
            now,
            gen,
        )
    elif s.phase != "Restarting":
        ready = next((c for c in s.conditions if c.type == "Ready"), None)
        if attempt.running == 0 and ready is not None and ready.reason == "AttemptCreated":
            return  # "waiting for N pod(s) of attempt A" still says it: no status write
        _phase(d, "Pending", "PodsPending", counts, now, gen)


def _pods_refused(d: Decision, message: str, now: dt.datetime, gen: int) -> None:
    """The Job cannot create its pods: Failed if the same pods are refused again (the Job is
    deleted: its controller would retry for ever), else Pending and waiting."""
    s = d.status
    text = f"the Job of attempt {s.attempt} cannot create its pods: {message}"[:MESSAGE_LIMIT]
    if any(p in message for p in PERMANENT_POD_REFUSALS):
        d.actions.append("delete_attempt")
        _phase(d, "Failed", "PodsRefused", text, now, gen)
    else:
        _still_waiting(d, d.status, "PodsRefused", text, now, gen)


def refused_create(
    d: Decision,
    before: RunStatus,
    message: str,
    permanent: bool,
    retry_after: float | None,
    now: dt.datetime,
    gen: int,
) -> None:
    """The apiserver refused a child of the attempt (`message`, its own): the Created
    condition says so instead of "created"; the run is Failed when retrying cannot help,
    else Pending (or Restarting) and retried with backoff. One Warning Event per new
    refusal; `before` is the status the decision started from."""
    s = d.status
    d.actions = [a for a in d.actions if a not in ("create_attempt", "create_combine")]
    d.events = [e for e in d.events if e[1] != "Created"]
    text = message[:MESSAGE_LIMIT]
    set_condition(s, "Created", False, "CreateFailed", text, now, gen)
    if permanent:
        _phase(d, "Failed", "CreateFailed", text, now, gen)
    else:
        d.retry, d.retry_after = True, retry_after
        _still_waiting(d, before, "CreateFailed", text, now, gen)


def _still_waiting(
    d: Decision, before: RunStatus, reason: str, message: str, now: dt.datetime, gen: int
) -> None:
    """Pending (or still Restarting) for `reason`, with a Warning Event when `before` did
    not already say it."""
    ready = next((c for c in before.conditions if c.type == "Ready"), None)
    if ready is None or (ready.reason, ready.message) != (reason, message):
        d.events.append(("Warning", reason, message))
    phase = "Restarting" if d.status.phase == "Restarting" else "Pending"
    _phase(d, phase, reason, message, now, gen, event=False)


def _scheduling_due(
    run: Run, s: RunStatus, attempt: AttemptState, d: Decision, now: dt.datetime
) -> bool:
    """Whether the attempt's pods are not all running schedulingTimeoutSeconds after its
    Job started (an attempt that ran all its pods once is past it); if not yet, the
    decision is asked to look again when it would be."""
    timeout = run.spec.scheduling_timeout_seconds
    if (
        not timeout
        or attempt.started is None
        or attempt.suspended
        or s.phase == "Running"
        or attempt.running >= attempt.total
    ):
        return False
    left = (attempt.started + dt.timedelta(seconds=timeout) - now).total_seconds()
    if left > 0:
        due = left + 0.1
        d.recheck_seconds = due if d.recheck_seconds is None else min(d.recheck_seconds, due)
    return left <= 0


def _scheduling_timeout(
    run: Run, d: Decision, attempt: AttemptState, now: dt.datetime, gen: int
) -> None:
    """Its pods are deleted (a gang placed in part holds what another needs), and the
    attempt restarted against maxRestarts, as Kueue's waitForPodsReady requeues a
    workload."""
    s = d.status
    timeout = run.spec.scheduling_timeout_seconds
    what = (
        f"{attempt.running}/{attempt.total} pods of attempt {s.attempt} running "
        f"schedulingTimeoutSeconds={timeout} after its Job started"
    )
    if attempt.waiting:
        what += f" ({attempt.waiting})"
    d.actions.append("delete_attempt")
    if s.restarts >= run.spec.max_restarts:
        message = f"{what}; maxRestarts={run.spec.max_restarts} reached"
        _phase(d, "Failed", "MaxRestartsReached", message[:MESSAGE_LIMIT], now, gen)
        return
    s.restarts += 1
    message = (
        f"{what}; starting attempt {s.attempt + 1} "
        f"(restart {s.restarts} of {run.spec.max_restarts})"
    )
    _new_attempt(d, "SchedulingTimeout", message[:MESSAGE_LIMIT], now, gen)


def _new_attempt(
    d: Decision, reason: str, message: str, now: dt.datetime, gen: int, failed: bool = False
) -> None:
    """Restarting with the next attempt; `failed`: the one ending failed (its Job and pods
    are kept for logs, per cleanPodPolicy)."""
    s = d.status
    if failed:
        s.last_failed_attempt = s.attempt
    s.attempt += 1
    if s.phase == "Restarting":  # a restart during a restart is a transition too
        d.events.append(("Warning", reason, message))
    _phase(d, "Restarting", reason, message, now, gen)


def _on_failure(run: Run, d: Decision, failure: PodFailure, now: dt.datetime, gen: int) -> None:
    s = d.status
    what = failure.describe()
    if failure.disrupted:
        s.disruptions += 1
        message = (
            f"{what}; starting attempt {s.attempt + 1} from the latest checkpoint "
            f"(disruption {s.disruptions}, not counted against maxRestarts)"
        )
        # Not a failed attempt: its pods are gone with the disruption, and an earlier
        # crash's are worth more for logs.
        _new_attempt(d, "Disrupted", message[:MESSAGE_LIMIT], now, gen)
        return
    policy = run.spec.failure_policy
    permanent = failures.permanent_reason(failure.exit_code, failure.reason, policy)
    if permanent:
        s.last_failed_attempt = s.attempt
        _phase(d, "Failed", permanent, f"{what}: a permanent error, not retried", now, gen)
    elif s.restarts >= run.spec.max_restarts:
        s.last_failed_attempt = s.attempt
        _phase(
            d,
            "Failed",
            "MaxRestartsReached",
            f"{what}; maxRestarts={run.spec.max_restarts} reached",
            now,
            gen,
        )
    else:
        d.actions.append("delete_attempt")
        s.restarts += 1
        reason = (
            failure.reason if failure.reason in ("Evicted", "DeadlineExceeded") else "AttemptFailed"
        )
        message = (
            f"{what}; starting attempt {s.attempt + 1} from the latest checkpoint "
            f"(restart {s.restarts} of {run.spec.max_restarts})"
        )
        _new_attempt(d, reason, message, now, gen, failed=True)
