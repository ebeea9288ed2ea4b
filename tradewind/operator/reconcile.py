"""One reconcile of a run: read the desired spec and the observed children, decide, apply.

Level-based and idempotent: the children of the current attempt are created if missing
(AlreadyExists is success), children of any other attempt are deleted, and the status is
written whole. Running it twice, or after an operator crash, creates nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tradewind.api import KINDS, RLRun, TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator import builders
from tradewind.operator.kube import Kube
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import (
    AttemptState,
    Decision,
    decide,
    kstatus_conditions,
    observe_attempt,
    set_condition,
)

log = logging.getLogger(__name__)
MANAGED_BY = "tradewind.dev/operator"


PARSED_METADATA = ("name", "namespace", "labels", "annotations")
"""What of a run's metadata the models keep (not managedFields, uid, resourceVersion...)."""


def parse_run(body: dict[str, Any]) -> TrainingRun | RLRun:
    model = KINDS[body["kind"]]
    doc: dict[str, Any] = {k: body[k] for k in ("apiVersion", "kind", "spec") if k in body}
    meta = body["metadata"]
    doc["metadata"] = {k: meta[k] for k in PARSED_METADATA if k in meta}
    run = model.model_validate(doc)
    assert isinstance(run, TrainingRun | RLRun)
    return run


class SpecCache:
    """parse_run of one run, redone only when what it reads changes: the spec (its
    generation), labels or annotations. Callers must not modify the model it returns."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: TrainingRun | RLRun | ValidationError | None = None

    @property
    def run(self) -> TrainingRun | RLRun | None:
        """The last model parsed, if the spec was valid."""
        return self._value if isinstance(self._value, TrainingRun | RLRun) else None

    @staticmethod
    def _key_of(body: Mapping[str, Any]) -> tuple[Any, ...]:
        meta = body["metadata"]
        return (
            body["kind"],
            meta.get("uid"),
            meta.get("generation"),
            meta.get("name"),
            meta.get("namespace"),
            tuple(sorted((meta.get("labels") or {}).items())),
            tuple(sorted((meta.get("annotations") or {}).items())),
        )

    def without_parsed_spec(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` without its spec if this cache holds the valid model parsed from it (parse
        will not read the spec again): a run's worker keeps the model, not both (the
        defaulted spec as dicts is ~10 KB per run)."""
        if (
            isinstance(self._value, TrainingRun | RLRun)
            and body["metadata"].get("generation") is not None
            and self._key_of(body) == self._key
        ):
            return {k: v for k, v in body.items() if k != "spec"}
        return body

    def parse(self, body: dict[str, Any]) -> TrainingRun | RLRun:
        meta = body["metadata"]
        key = self._key_of(body)
        if meta.get("generation") is None or key != self._key:
            try:
                self._value = parse_run(body)
            except ValidationError as exc:
                self._value = exc
            self._key = key
        if isinstance(self._value, ValidationError):
            raise self._value
        assert self._value is not None
        return self._value


def invalid_spec_decision(body: dict[str, Any], exc: ValidationError, now: dt.datetime) -> Decision:
    """A spec the apiserver let through but the models refuse: Failed, naming the field."""
    status = RunStatus.model_validate(body.get("status") or {})
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = f"invalid spec: {where}: {first['msg']}"
    decision = Decision(status=status)
    gen = body["metadata"].get("generation", 0)
    if status.phase != "Failed":
        decision.events.append(("Warning", "InvalidSpec", message))
    status.phase = "Failed"
    status.completion_time = status.completion_time or now
    status.observed_generation = gen
    set_condition(status, "Failed", True, "InvalidSpec", message, now, gen)
    set_condition(status, "Ready", False, "InvalidSpec", message, now, gen)
    for type_, value, why, text in kstatus_conditions("Failed", "InvalidSpec", message):
        set_condition(status, type_, value, why, text, now, gen)
    return decision


def reconcile(
    body: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    kube: Kube,
    settings: OperatorSettings,
    now: dt.datetime | None = None,
    spec_cache: SpecCache | None = None,
    defer_counts: bool = False,
    created_attempt: int | None = None,
) -> Decision:
    """Converge one run. `jobs` and `pods` are the run's children as the indexes see them.
    With `defer_counts`, a status that differs only in how many pods of a Pending attempt
    run is not written (`decision.deferred`): the caller writes it a little later, or with
    the next transition. `created_attempt`: the attempt whose children this caller created
    recently (not created again while the indexes catch up)."""
    now = now or dt.datetime.now(dt.UTC)
    meta = body["metadata"]
    try:
        run = spec_cache.parse(body) if spec_cache is not None else parse_run(body)
    except ValidationError as exc:
        decision = invalid_spec_decision(body, exc, now)
        decision.written_version = kube.patch_status(body, decision.status)
        return decision
    status = RunStatus.model_validate(body.get("status") or {})
    if run.spec.managed_by not in (None, MANAGED_BY):
        return Decision(status=status)  # another controller's run (e.g. Kueue MultiKueue)
    state, create_combine = _observe(run, status.attempt, jobs, pods)
    decision = decide(run, status, state, now, meta.get("generation", 0))
    if create_combine and decision.status.phase not in ("Failed", "Suspended"):
        decision.actions.append("create_combine")
    if created_attempt is not None and created_attempt == decision.status.attempt:
        # Created moments ago; the watch has not shown the Job yet: creating again would
        # only meet AlreadyExists.
        decision.actions = [a for a in decision.actions if a != "create_attempt"]
    _apply(run, body, decision, jobs, kube, settings)
    if decision.status != status:
        if defer_counts and counts_only(status, decision.status):
            decision.deferred = True
        else:
            decision.written_version = kube.patch_status(body, decision.status)
    # Events last: the status is the record; an Event lost to a crash here is not re-posted.
    for kind, reason, message in decision.events:
        kube.event(body, kind, reason, message)
    return decision


def counts_only(old: RunStatus, new: RunStatus) -> bool:
    """Whether `new` only moves the pod counts of a Pending attempt on: same phase, attempt,
    restarts and condition statuses; nodesReady and the messages may differ."""
    if old.phase != "Pending" or new.phase != "Pending":
        return False
    volatile = {"nodes_ready", "conditions"}
    if old.model_dump(exclude=volatile) != new.model_dump(exclude=volatile):
        return False
    return [(c.type, c.status) for c in old.conditions] == [
        (c.type, c.status) for c in new.conditions
    ]


def _observe(
    run: TrainingRun | RLRun, attempt: int, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> tuple[AttemptState, bool]:
    """The state of the current attempt, and whether its combine step is due. An ensemble's
    attempt is done when its combine Job is: until then a finished training Job is still
    running."""

    def of(items: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
        labels = [(i, i["metadata"]["labels"]) for i in items]
        return [
            i
            for i, lab in labels
            if lab.get(builders.ATTEMPT_LABEL) == str(attempt)
            and lab.get(builders.ROLE_LABEL, "train") == role
        ]

    train_jobs, combine_jobs = of(jobs, "train"), of(jobs, "combine")
    train = observe_attempt(train_jobs[0] if train_jobs else None, of(pods, "train"))
    if not (builders.needs_combine(run) and train.succeeded):
        return train, False
    if not combine_jobs:
        return AttemptState(exists=True, running=train.total, total=train.total), True
    return observe_attempt(combine_jobs[0], of(pods, "combine")), False


def _apply(
    run: TrainingRun | RLRun,
    body: dict[str, Any],
    decision: Decision,
    jobs: list[dict[str, Any]],
    kube: Kube,
    settings: OperatorSettings,
) -> None:
    attempt = decision.status.attempt
    ns = run.metadata.namespace or "default"
    for job in jobs:  # children of other attempts are stale: tear them down with their pods
        if job["metadata"]["labels"].get(builders.ATTEMPT_LABEL) != str(attempt):
            kube.delete("Job", ns, job["metadata"]["name"])
            stale = int(job["metadata"]["labels"].get(builders.ATTEMPT_LABEL, -1))
            kube.delete("ConfigMap", ns, builders.config_name(run, stale))
    actions = decision.actions
    if "delete_run" in actions:
        kube.delete(run.kind, ns, run.metadata.name)
        return
    if "delete_attempt" in actions:
        kube.delete("Job", ns, builders.job_name(run, attempt))
        kube.delete("Job", ns, builders.combine_job_name(run, attempt))
    if "create_attempt" in actions:
        owner = builders.owner_reference(body)
        uid = body["metadata"]["uid"]
        kube.create(builders.build_configmap(run, attempt, owner))
        kube.create(builders.build_service(run, owner))
        kube.create(builders.build_job(run, attempt, uid, owner, settings))
    if "create_combine" in actions:
        owner = builders.owner_reference(body)
        kube.create(
            builders.build_combine_job(run, attempt, body["metadata"]["uid"], owner, settings)
        )
    if "suspend_job" in actions or "resume_job" in actions:
        kube.set_job_suspended(ns, builders.job_name(run, attempt), "suspend_job" in actions)
