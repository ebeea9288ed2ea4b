"""What the indexes keep of a child: only the fields the status logic reads, so a thousand
runs' Jobs and pods cost little memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradewind.operator import builders

DISRUPTION_TARGET = "DisruptionTarget"
"""The pod condition the apiserver, scheduler, taint manager, PodGC and kubelet set on a pod
they are about to stop: an eviction, a preemption, a node drain or pressure."""
KEPT_LABELS = (builders.ATTEMPT_LABEL, builders.ROLE_LABEL, builders.RUN_UID_LABEL)
"""The labels the status logic reads (a pod carries ~10: the Job controller's, kwok's...)."""


def _meta(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    labels = meta.get("labels") or {}
    return {"name": meta["name"], "labels": {k: labels[k] for k in KEPT_LABELS if k in labels}}


def job(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Job as the status logic reads it; `metadata.owner` is the uid of its controller (the
    run it belongs to), `uid` and `creationTimestamp` its own; `status.startTime` is when the
    Job controller started it (unset while it is suspended, e.g. queued by Kueue)."""
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body["metadata"]
    refs = meta.get("ownerReferences") or []
    owner = next((r.get("uid") for r in refs if r.get("controller")), None)
    kept = {"uid": meta.get("uid"), "creationTimestamp": meta.get("creationTimestamp")}
    return {
        "metadata": _meta(body) | kept | {"owner": owner},
        "spec": {"completions": spec.get("completions"), "suspend": spec.get("suspend")},
        "status": {
            "conditions": [dict(c) for c in status.get("conditions") or []],
            "startTime": status.get("startTime"),
        },
    }


def pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A pod as the status logic reads it: its phase, why it failed, and its DisruptionTarget
    condition if it has one (none of the others: they change with every pod's start)."""
    status = body.get("status") or {}
    kept: dict[str, Any] = {
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "containerStatuses": [
            {"state": dict(s.get("state") or {})} for s in status.get("containerStatuses") or []
        ],
    }
    disruption = [
        {k: c.get(k) for k in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or []
        if c.get("type") == DISRUPTION_TARGET
    ]
    if disruption:
        kept["conditions"] = disruption
    return {"metadata": _meta(body), "status": kept}


OBSERVE = {"jobs": job, "pods": pod}
"""What the indexes keep of a child, by the child's resource plural."""
