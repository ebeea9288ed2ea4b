"""One reconcile of a run: read the desired spec and the observed children, decide, apply.

Level-based and idempotent: the children of the current attempt are created if missing
(AlreadyExists is success), children of any other attempt are deleted, and the status is
written whole. Running it twice, or after an operator crash, creates nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import ValidationError

from tradewind.api import KINDS, RLRun, TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator import builders
from tradewind.operator.kube import Kube
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import Decision, decide, observe_attempt, set_condition

log = logging.getLogger(__name__)


def parse_run(body: dict[str, Any]) -> TrainingRun | RLRun:
    model = KINDS[body["kind"]]
    doc = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    run = model.model_validate(doc)
    assert isinstance(run, TrainingRun | RLRun)
    return run


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
    return decision


def reconcile(
    body: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    kube: Kube,
    settings: OperatorSettings,
    now: dt.datetime | None = None,
) -> Decision:
    """Converge one run. `jobs` and `pods` are the run's children as the indexes see them."""
    now = now or dt.datetime.now(dt.UTC)
    meta = body["metadata"]
    try:
        run = parse_run(body)
    except ValidationError as exc:
        decision = invalid_spec_decision(body, exc, now)
        decision.written_version = kube.patch_status(body, decision.status)
        return decision
    status = RunStatus.model_validate(body.get("status") or {})
    current = [
        j
        for j in jobs
        if j["metadata"]["labels"].get(builders.ATTEMPT_LABEL) == str(status.attempt)
    ]
    attempt_pods = [
        p
        for p in pods
        if p["metadata"]["labels"].get(builders.ATTEMPT_LABEL) == str(status.attempt)
    ]
    decision = decide(
        run,
        status,
        observe_attempt(current[0] if current else None, attempt_pods),
        now,
        meta.get("generation", 0),
    )
    _apply(run, body, decision, jobs, kube, settings)
    if decision.status != status:
        decision.written_version = kube.patch_status(body, decision.status)
    return decision


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
            kube.delete("ConfigMap", ns, job["metadata"]["name"] + "-config")
    actions = decision.actions
    if "delete_run" in actions:
        kube.delete(run.kind, ns, run.metadata.name)
        return
    if "delete_attempt" in actions:
        kube.delete("Job", ns, builders.job_name(run, attempt))
    if "create_attempt" in actions:
        owner = builders.owner_reference(body)
        uid = body["metadata"]["uid"]
        kube.create(builders.build_configmap(run, attempt, owner))
        kube.create(builders.build_service(run, owner))
        kube.create(builders.build_job(run, attempt, uid, owner, settings))
    if "suspend_job" in actions or "resume_job" in actions:
        kube.set_job_suspended(ns, builders.job_name(run, attempt), "suspend_job" in actions)
    for kind, reason, message in decision.events:
        kube.event(body, kind, reason, message)
