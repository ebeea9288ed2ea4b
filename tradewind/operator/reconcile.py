"""One reconcile of a run: read the desired spec and the observed children, decide, apply.

Level-based and idempotent: the children of the current attempt are created if missing
(AlreadyExists is success), children of any other attempt are deleted, and the status is
written whole. Running it twice, or after an operator crash, creates nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from tradewind.api import KINDS, RLRun, TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator import builders, failures, kueue, shared_models, storage_scope
from tradewind.operator.kube import Kube, Refused
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import (
    TERMINAL,
    AttemptState,
    Decision,
    decide,
    kstatus_conditions,
    observe_attempt,
    refused_create,
    set_condition,
)

log = logging.getLogger(__name__)
MANAGED_BY = "tradewind.dev/operator"


PARSED_METADATA = ("name", "namespace", "uid", "labels", "annotations")
"""What of a run's metadata the models keep (not managedFields, resourceVersion...); the uid
goes into its children's labels."""
PODS_GRACE_SECONDS = 5.0
"""A Job whose pods have not all appeared this long after its creation is asked why (its
FailedCreate Events)."""
PODS_RECHECK_SECONDS = 15.0
"""How often it is asked again while its pods are missing and no Event says why."""
FAILED_CREATE_READ_SECONDS = 5.0
"""One read of a namespace's FailedCreate Events answers for all its Jobs this long."""
POD_RECORD_WAIT_SECONDS = 10.0
"""How long a Job's failure waits for the failed pod's own record to reach the pods' index."""
GENERATED_POD_NAME = re.compile(r'(pods? "[a-z0-9.-]+?)-[bcdfghjklmnpqrstvwxz2456789]{5}(?=")')
"""A pod name the Job controller generated (`<job>-<index>-` and 5 random characters)."""
WORKLOAD_RECHECK_SECONDS = 30.0
"""How often the Kueue Workload of a queued run's suspended Job is read again for its message
(the message is a diagnosis: admission itself comes by the Job's watch)."""
AGGREGATED = "(combined from similar events): "
"""client-go's prefix of an Event message that stands for several similar ones."""


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
                self._value = shared_models.shared(parse_run(body))
            except ValidationError as exc:
                self._value = exc
            self._key = key
        if isinstance(self._value, ValidationError):
            raise self._value
        assert self._value is not None
        return self._value


def invalid_spec_decision(body: dict[str, Any], exc: ValidationError, now: dt.datetime) -> Decision:
    """A spec the apiserver let through but the models refuse: Failed, naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return refused_spec_decision(body, "InvalidSpec", f"invalid spec: {where}: {first['msg']}", now)


def refused_spec_decision(
    body: dict[str, Any], reason: str, message: str, now: dt.datetime
) -> Decision:
    """A spec the operator will not run (`reason`, `message` naming the field): Failed."""
    status = RunStatus.model_validate(body.get("status") or {})
    decision = Decision(status=status)
    gen = body["metadata"].get("generation", 0)
    if status.phase != "Failed":
        decision.events.append(("Warning", reason, message))
    status.phase = "Failed"
    status.completion_time = status.completion_time or now
    status.observed_generation = gen
    set_condition(status, "Failed", True, reason, message, now, gen)
    set_condition(status, "Ready", False, reason, message, now, gen)
    for type_, value, why, text in kstatus_conditions("Failed", reason, message):
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
    if settings.storage_scope and status.phase not in TERMINAL:
        refused = _refuse_out_of_reach(run, body, jobs, kube, settings, now)
        if refused is not None:
            return refused
    # Children by uid: those of an earlier run of this name (deleted, its Jobs still held by
    # a finalizer) are neither counted nor touched.
    jobs = [j for j in jobs if _owned_by(j, meta.get("uid"))]
    pods = [p for p in pods if _labelled_for(p, meta)]
    seen = _observe(run, status.attempt, jobs, pods)
    seen, state, recheck = _look_closer(seen, run, kube, now)
    gen = meta.get("generation", 0)
    decision = _decide(run, status, seen, state, now, gen, created_attempt, recheck)
    try:
        _delete_stale(run, decision.status, jobs, pods, kube)
        _apply(run, body, decision, jobs, kube, settings)
    except Refused as exc:
        log.warning("%s %s/%s: %s", run.kind, run.metadata.namespace, run.metadata.name, exc)
        refused_create(decision, status, exc.message, exc.permanent, exc.retry_after, now, gen)
    if decision.status != status:
        # A decision with an Event is a transition: its status is written before the Event
        # (and the next reconcile then sees it, and posts no second one).
        if defer_counts and counts_only(status, decision.status) and not decision.events:
            decision.deferred = True
        else:
            decision.written_version = kube.patch_status(body, decision.status)
    # Events last: the status is the record; an Event lost to a crash here is not re-posted.
    for kind, reason, message in decision.events:
        kube.event(body, kind, reason, message)
    return decision


def _refuse_out_of_reach(
    run: TrainingRun | RLRun,
    body: dict[str, Any],
    jobs: list[dict[str, Any]],
    kube: Kube,
    settings: OperatorSettings,
    now: dt.datetime,
) -> Decision | None:
    """Failed (StorageNotAllowed) if the run names storage its namespace may not reach; a
    running attempt's Jobs are deleted (an administrator narrowed the reach meanwhile: it
    stops writing there). None if every URI is within reach."""
    refusal = storage_scope.check_run_storage(run, settings.checkpoint_bucket, kube)
    if refusal is None:
        return None
    decision = refused_spec_decision(body, storage_scope.REASON, refusal, now)
    uid, ns = body["metadata"].get("uid"), run.metadata.namespace or "default"
    for job in jobs:
        if _owned_by(job, uid):
            kube.delete("Job", ns, job["metadata"]["name"], job["metadata"].get("uid"))
    decision.written_version = kube.patch_status(body, decision.status)
    for kind, reason, message in decision.events:
        kube.event(body, kind, reason, message)
    return decision


def _decide(
    run: TrainingRun | RLRun,
    status: RunStatus,
    seen: Observed,
    state: AttemptState,
    now: dt.datetime,
    gen: int,
    created_attempt: int | None,
    recheck: float | None = None,
) -> Decision:
    decision = decide(run, status, state, now, gen)
    if recheck is not None:  # the sooner of decide's (a scheduling timeout) and the caller's
        decision.recheck_seconds = min(recheck, decision.recheck_seconds or recheck)
    if (
        seen.combine_due
        and decision.status.phase not in ("Failed", "Suspended")
        and decision.status.attempt == status.attempt  # not rolled to a new one
    ):
        decision.actions.append("create_combine")
    if created_attempt is not None and created_attempt == decision.status.attempt:
        # Created moments ago; the watch has not shown the Job yet: creating again would
        # only meet AlreadyExists.
        decision.actions = [a for a in decision.actions if a != "create_attempt"]
    return decision


def counts_only(old: RunStatus, new: RunStatus) -> bool:
    """Whether `new` only moves the pod counts of a Pending attempt on: same phase, attempt,
    restarts and condition statuses; nodesReady, the messages and startTime may differ.
    startTime is the Job's (the Job controller sets it soon after the Job is created, on a busy
    cluster long after the creating write): every reconcile reads it from the Job again, and
    the next write carries it."""
    if old.phase != "Pending" or new.phase != "Pending":
        return False
    volatile = {"nodes_ready", "conditions", "start_time"}
    if old.model_dump(exclude=volatile) != new.model_dump(exclude=volatile):
        return False
    return [(c.type, c.status) for c in old.conditions] == [
        (c.type, c.status) for c in new.conditions
    ]


def _owned_by(job: dict[str, Any], uid: str | None) -> bool:
    """Whether the run `uid` controls this Job (by its ownerReference; a Job without one,
    by its run-uid label; one with neither predates uids in labels: the run's by name)."""
    meta = job["metadata"]
    owner = meta.get("owner") or meta["labels"].get(builders.RUN_UID_LABEL)
    return owner is None or uid is None or owner == uid


def _labelled_for(pod: dict[str, Any], run_meta: Mapping[str, Any]) -> bool:
    label, uid = pod["metadata"]["labels"].get(builders.RUN_UID_LABEL), run_meta.get("uid")
    return label is None or uid is None or label == uid


@dataclass(frozen=True)
class Observed:
    """The current attempt as the indexes show it: its state, whether its combine step is
    due, and the Job and pods that state was read from."""

    state: AttemptState
    combine_due: bool = False
    job: dict[str, Any] | None = None
    pods: tuple[dict[str, Any], ...] = ()


def _observe(
    run: TrainingRun | RLRun, attempt: int, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> Observed:
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
    train_job, train_pods = (train_jobs[0] if train_jobs else None), of(pods, "train")
    train = observe_attempt(train_job, train_pods)
    if not (builders.needs_combine(run) and train.succeeded):
        return Observed(train, False, train_job, tuple(train_pods))
    if not combine_jobs:
        return Observed(AttemptState(exists=True, running=train.total, total=train.total), True)
    combine_pods = of(pods, "combine")
    state = observe_attempt(combine_jobs[0], combine_pods)
    return Observed(state, False, combine_jobs[0], tuple(combine_pods))


def _look_closer(
    seen: Observed, run: TrainingRun | RLRun, kube: Kube, now: dt.datetime
) -> tuple[Observed, AttemptState, float | None]:
    """What the indexes alone do not tell: a failed pod's record not seen yet, why pods are
    missing, why a queued Job is held. The state to decide on, and when to look again."""
    state, awaited = _await_failed_pod(seen.state, now)
    seen = replace(seen, state=state)
    state, recheck = _why_pods_missing(seen, run, kube, now)
    if state.suspended and not run.spec.suspend:
        state, recheck = _why_held(seen, run, kube, now)
    if awaited is not None:
        recheck = awaited if recheck is None else min(recheck, awaited)
    return seen, state, recheck


def _await_failed_pod(state: AttemptState, now: dt.datetime) -> tuple[AttemptState, float | None]:
    """A Job failed for a pod's failure that the pods' index does not show yet: the pod's
    record (its exit code, OOMKilled) decides whether the run restarts, so it is awaited for
    POD_RECORD_WAIT_SECONDS; then the Job's word is taken (the pod may be gone)."""
    since = state.failure_unexplained_since
    if since is None or (waited := (now - since).total_seconds()) >= POD_RECORD_WAIT_SECONDS:
        return state, None
    return replace(state, failure=None), max(POD_RECORD_WAIT_SECONDS - waited, 0.5)


def _why_pods_missing(
    seen: Observed, run: TrainingRun | RLRun, kube: Kube, now: dt.datetime
) -> tuple[AttemptState, float | None]:
    """A Job with fewer pods than it should, for a few seconds: the Job controller's
    FailedCreate Event says why (Jobs have no condition for it), e.g. PodSecurity or quota.
    Returns the state with `refused` set if so, and when to look again if not yet known."""
    state, job = seen.state, seen.job
    if (
        job is None
        or state.suspended
        or state.succeeded
        or state.failure is not None
        or len(seen.pods) >= state.total
    ):
        return state, None
    if wait := _too_young(job, now):
        return state, wait
    uid, ns = job["metadata"].get("uid"), run.metadata.namespace or "default"
    try:
        message = kube.failed_create(ns, uid, FAILED_CREATE_READ_SECONDS) if uid else None
    except ApiException as exc:  # a diagnosis, not the reconcile: it goes on without
        log.warning("Events of Job %s/%s not read: %s %s", ns, job["metadata"]["name"],
                    exc.status, exc.reason)  # fmt: skip
        message = None
    if not message:
        return state, PODS_RECHECK_SECONDS
    # The pod's generated suffix changes with each of the Job controller's tries, and the
    # Event recorder prefixes what it aggregates: without them the message (and so the
    # status) stays the same while the reason does.
    message = GENERATED_POD_NAME.sub(r"\1-*", message.removeprefix(AGGREGATED))
    return replace(state, refused=message), None


def _why_held(
    seen: Observed, run: TrainingRun | RLRun, kube: Kube, now: dt.datetime
) -> tuple[AttemptState, float | None]:
    """A queued run's Job that Kueue holds suspended, a few seconds old: what its Workload
    says (`admission`), read again every WORKLOAD_RECHECK_SECONDS while it waits (its
    admission itself comes by the Job's watch). Returns the state and when to look again."""
    state, job = seen.state, seen.job
    if (
        job is None
        or kueue.queue_name(run) is None
        or state.suspended_by_run
        or state.succeeded
        or state.failure is not None
    ):
        return state, None
    if wait := _too_young(job, now):
        return state, wait
    uid, ns = job["metadata"].get("uid"), run.metadata.namespace or "default"
    try:
        message = kube.workload_message(ns, uid, WORKLOAD_RECHECK_SECONDS) if uid else ""
    except ApiException as exc:  # a diagnosis, not the reconcile: it goes on without
        log.warning("Workload of Job %s/%s not read: %s %s", ns, job["metadata"]["name"],
                    exc.status, exc.reason)  # fmt: skip
        message = ""
    admission = kueue.NO_WORKLOAD if message is None else message
    return replace(state, admission=admission), WORKLOAD_RECHECK_SECONDS


def _too_young(job: dict[str, Any], now: dt.datetime) -> float | None:
    """Seconds until the Job is PODS_GRACE_SECONDS old (when it is worth asking why its pods
    are missing or held), or None once it is."""
    created = _timestamp(job["metadata"].get("creationTimestamp"))
    age = (now - created).total_seconds() if created is not None else PODS_GRACE_SECONDS
    return PODS_GRACE_SECONDS - age if age < PODS_GRACE_SECONDS else None


def _timestamp(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _delete_stale(
    run: TrainingRun | RLRun,
    status: RunStatus,
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    kube: Kube,
) -> None:
    """Jobs of other attempts (this run's only), with their pods, ConfigMaps and PodGroups,
    are deleted unless spec.cleanPodPolicy keeps them (`_kept`). An attempt label that is
    not a number is someone's edit: the Job goes, and no other name is guessed from it."""
    ns = run.metadata.namespace or "default"
    policy, ended = run.spec.clean_pod_policy, _ended_attempts(jobs, pods)
    gone: set[int] = set()
    for job in jobs:
        label = job["metadata"]["labels"].get(builders.ATTEMPT_LABEL)
        number = int(label) if label is not None and label.isdigit() else None
        if number is not None and _kept(policy, number, status, ended):
            continue
        kube.delete("Job", ns, job["metadata"]["name"], uid=job["metadata"].get("uid"))
        if number is not None and number not in gone:
            gone.add(number)
            kube.delete("ConfigMap", ns, builders.config_name(run, number))
            if group := builders.pod_group_resource(run):
                kube.delete(group, ns, builders.job_name(run, number))


def _kept(policy: str, number: int, status: RunStatus, ended: set[int]) -> bool:
    """Whether attempt `number`'s children stay: the current attempt's (`All`: until the
    run ends); an earlier one's only once it failed (no pod of it runs any more: the Job
    controller deletes a failed Job's other pods), `None`: every such one, `Running`: the
    last failed attempt's; `All`: none. A later attempt than the current one is someone's
    edit."""
    if number == status.attempt:
        return not (policy == "All" and status.phase in TERMINAL)
    if number > status.attempt or policy == "All" or number not in ended:
        return False
    return policy == "None" or number == status.last_failed_attempt


def _ended_attempts(jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> set[int]:
    """Attempts that failed for good: their Job is Failed, or a pod of theirs is (a pod's
    Failed phase is final, and makes its Job, which allows no retry, fail), or was
    disrupted (on its way out: the Job controller counts it failed)."""
    found: set[str] = set()
    for job in jobs:
        conditions = job.get("status", {}).get("conditions") or []
        if any(c.get("type") == "Failed" and c.get("status") == "True" for c in conditions):
            found.add(job["metadata"]["labels"].get(builders.ATTEMPT_LABEL, ""))
    for pod in pods:
        if pod.get("status", {}).get("phase") == "Failed" or failures.disruption(pod):
            found.add(pod["metadata"]["labels"].get(builders.ATTEMPT_LABEL, ""))
    return {int(label) for label in found if label.isdigit()}


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
    uids = {j["metadata"]["name"]: j["metadata"].get("uid") for j in jobs}
    actions = decision.actions
    if "delete_run" in actions:
        kube.delete(run.kind, ns, run.metadata.name, uid=body["metadata"].get("uid"))
        return
    if "delete_attempt" in actions:
        for name in (builders.job_name(run, attempt), builders.combine_job_name(run, attempt)):
            kube.delete("Job", ns, name, uid=uids.get(name))
    if "create_attempt" in actions:
        owner = builders.owner_reference(body)
        uid = body["metadata"]["uid"]
        kube.create(builders.build_configmap(run, attempt, owner))
        if builders.needs_service(run):
            kube.create(builders.build_service(run, owner))
        if (pod_group := builders.build_pod_group(run, attempt, owner)) is not None:
            kube.create(pod_group)  # before the Job: no pod of the gang binds before it
        kube.create(builders.build_job(run, attempt, uid, owner, settings))
    if "create_combine" in actions:
        owner = builders.owner_reference(body)
        kube.create(
            builders.build_combine_job(run, attempt, body["metadata"]["uid"], owner, settings)
        )
    if "suspend_job" in actions or "resume_job" in actions:
        name = builders.job_name(run, attempt)
        kube.set_job_suspended(ns, name, "suspend_job" in actions, uid=uids.get(name))
