"""Pure logic of a Sweep: its children as observed, how many trials to start, its phase,
conditions and Events. Unit-tested without a cluster or a study; `sweep_reconcile` applies it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tradewind.api import GROUP
from tradewind.api.identity import PARENT_RUN_ANNOTATION, SWEEP_LABEL, TRIAL_LABEL
from tradewind.api.status import SweepStatus, TrialCounts
from tradewind.api.sweep import SweepSpec
from tradewind.operator.status import kstatus_conditions, set_condition

STUDY_ANNOTATION = f"{GROUP}/study"
"""On each child run: the name of the Optuna study its trial belongs to."""
TERMINAL = ("Succeeded", "Failed")
RUNNING_CHILD = ("Running", "Restarting")


def study_name(namespace: str, name: str, uid: str) -> str:
    """The Sweep's study: named after its uid, so a Sweep deleted and created again under the
    same name starts a new study."""
    return f"{namespace}.{name}.{uid}"


def child_name(sweep: str, number: int) -> str:
    return f"{sweep}-{number}"


@dataclass(frozen=True)
class Child:
    """What the Sweep needs to know of one child run."""

    name: str
    number: int
    phase: str
    """The child's status.phase; empty before its operator wrote one."""
    deleting: bool = False
    message: str = ""
    """Why the child failed (its Failed condition)."""
    uid: str = ""
    """The child run's uid: its trainer tags its MLflow runs with it (`tradewind.uid`), so a
    Sweep created again under the same name never reads its predecessor's trials."""
    metrics: tuple[tuple[str, float], ...] = ()
    """Its status.metrics (MLflow's latest, as its own reconcile last read them)."""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def active(self) -> bool:
        """Holds (or will hold) pods: not finished and not on its way out."""
        return not self.finished and not self.deleting


def observe_child(body: dict[str, Any], sweep_uid: str) -> Child | None:
    """A child run of the Sweep with uid `sweep_uid`, or None if the object is not one (another
    controller's run, or a label that is not a trial number)."""
    meta = body.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    if not any(o.get("uid") == sweep_uid and o.get("controller") for o in owners):
        return None
    number = (meta.get("labels") or {}).get(TRIAL_LABEL, "")
    if not number.isdigit():
        return None
    status = body.get("status") or {}
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), None)
    message = f"{failed.get('reason', '')}: {failed.get('message', '')}" if failed else ""
    metrics = tuple((str(k), float(v)) for k, v in sorted((status.get("metrics") or {}).items()))
    return Child(
        name=meta["name"],
        number=int(number),
        phase=str(status.get("phase") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        message=message,
        metrics=metrics,
        uid=str(meta.get("uid") or ""),
    )


def timed_out(spec: SweepSpec, start: dt.datetime | None, now: dt.datetime) -> bool:
    """Past timeoutSeconds since the first trial: no new trials."""
    return bool(
        spec.timeout_seconds
        and start is not None
        and now >= start + dt.timedelta(seconds=spec.timeout_seconds)
    )


@dataclass(frozen=True)
class Tally:
    """The study as the budget sees it."""

    budget: int
    """maxTrials (or a smaller grid)."""
    launched: int
    """Trials started so far (counts towards the budget)."""
    running: int
    """Trials not finished: each holds a parallelism slot."""
    failed: int
    """Failed trials (against maxFailedTrials)."""
    max_failed: int
    """maxFailedTrials: the sweep fails when more trials than this have failed."""
    timed_out: bool = False
    """Past timeoutSeconds: no new trials."""

    @property
    def too_many_failures(self) -> bool:
        return self.failed > self.max_failed


def trials_to_start(spec: SweepSpec, t: Tally) -> int:
    """New trials to ask now: none once failed or out of time, else up to `parallelism`
    running and `budget` started."""
    if t.too_many_failures or t.timed_out:
        return 0
    return max(0, min(spec.parallelism - t.running, t.budget - t.launched))


@dataclass(frozen=True)
class Outcome:
    phase: str
    reason: str
    message: str


def outcome(t: Tally, counts: TrialCounts) -> Outcome:
    """The Sweep's phase, from its trials (level-based: the same study gives the same
    answer, whatever the operator did before)."""
    done = f"{counts.completed} completed, {counts.pruned} pruned, {counts.failed} failed"
    active = counts.pending + counts.running
    if t.too_many_failures:
        return Outcome(
            "Failed",
            "MaxFailedTrials",
            f"{t.failed} trials failed, more than maxFailedTrials={t.max_failed} ({done})",
        )
    if active:
        return Outcome(
            "Running",
            "TrialsRunning",
            f"{active} trial(s) running; {done} of {t.budget}",
        )
    if t.launched >= t.budget or t.timed_out:
        reason = "MaxTrialsReached" if t.launched >= t.budget else "TimeoutReached"
        if counts.completed == 0:
            return Outcome(
                "Failed", "NoTrialCompleted", f"{reason}, but no trial completed: {done}"
            )
        return Outcome("Succeeded", reason, f"{done} of {t.budget}")
    return Outcome("Pending", "WaitingForTrials", f"{done} of {t.budget}")


def apply_outcome(
    status: SweepStatus, result: Outcome, now: dt.datetime, generation: int
) -> list[tuple[str, str, str]]:
    """Move `status` to the outcome's phase with its conditions (the kstatus ones too:
    Reconciling while Pending or Running, Stalled once Failed); the Events of a change."""
    events = []
    if status.phase != result.phase:
        kind = "Warning" if result.phase == "Failed" else "Normal"
        events.append((kind, result.reason, result.message))
    status.phase = result.phase  # type: ignore[assignment]
    status.observed_generation = generation
    for cond in ("Running", "Succeeded", "Failed"):
        if cond == result.phase:
            set_condition(status, cond, True, result.reason, result.message, now, generation)
        elif any(c.type == cond for c in status.conditions):
            set_condition(status, cond, False, result.reason, result.message, now, generation)
    ready = result.phase in ("Running", "Succeeded")
    set_condition(status, "Ready", ready, result.reason, result.message, now, generation)
    for type_, value, why, text in kstatus_conditions(result.phase, result.reason, result.message):
        set_condition(status, type_, value, why, text, now, generation)
    if result.phase in TERMINAL:
        status.completion_time = status.completion_time or now
    return events


def invalid_status(
    status: SweepStatus, message: str, now: dt.datetime, generation: int
) -> list[tuple[str, str, str]]:
    """A Sweep the apiserver let through but the models refuse: Failed, naming the field."""
    return apply_outcome(status, Outcome("Failed", "InvalidSpec", message), now, generation)


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """The controller reference each child run carries: deleting the Sweep deletes them."""
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_child(
    body: dict[str, Any],
    spec: SweepSpec,
    number: int,
    params: dict[str, Any],
    study: str,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The child run of trial `number`: the template with the trial's parameters applied,
    named `<sweep>-<number>`, labelled with its Sweep and trial number, owned by the Sweep;
    the trainer tags its MLflow run with them and nests it under the Sweep's run
    (`tradewind.api.identity`)."""
    meta = body["metadata"]
    run_spec = spec.trial_spec(params)
    labels = {**(meta.get("labels") or {}), SWEEP_LABEL: meta["name"], TRIAL_LABEL: str(number)}
    annotations = {STUDY_ANNOTATION: study}
    if parent_run_id:
        annotations[PARENT_RUN_ANNOTATION] = parent_run_id
    return {
        "apiVersion": body["apiVersion"],
        "kind": spec.template.kind,
        "metadata": {
            "name": child_name(meta["name"], number),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": run_spec,
    }
