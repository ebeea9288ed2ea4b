"""What the indexes keep of a child: only the fields the status logic reads, so a thousand
runs' Jobs and pods cost little memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _meta(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"name": meta["name"], "labels": dict(meta.get("labels") or {})}


def job(body: Mapping[str, Any]) -> dict[str, Any]:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    return {
        "metadata": _meta(body),
        "spec": {"completions": spec.get("completions"), "suspend": spec.get("suspend")},
        "status": {"conditions": [dict(c) for c in status.get("conditions") or []]},
    }


def pod(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    return {
        "metadata": _meta(body),
        "status": {
            "phase": status.get("phase"),
            "reason": status.get("reason"),
            "message": status.get("message"),
            "containerStatuses": [
                {"state": dict(s.get("state") or {})} for s in status.get("containerStatuses") or []
            ],
        },
    }
