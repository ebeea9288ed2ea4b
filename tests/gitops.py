"""The shipped GitOps health checks, evaluated the way Argo CD and Flux evaluate them: the
Argo CD Lua script (deploy/argocd/health.lua) in Lua 5.1 through lupa (Argo CD runs
gopher-lua, a Lua 5.1), the Flux CEL expressions (deploy/flux/kustomization.yaml), and plain
kstatus (what Flux and kstatus-based tools read without expressions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cel
import lupa.lua51 as lupa  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARGOCD_HEALTH = ROOT / "deploy" / "argocd" / "health.lua"
FLUX_KUSTOMIZATION = ROOT / "deploy" / "flux" / "kustomization.yaml"


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON -> Lua as Argo CD converts it: objects and arrays become tables (arrays 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """{"status": ..., "message": ...} as Argo CD's health check of `obj` reports it."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(ARGOCD_HEALTH.read_text())
    return {str(k): str(v) for k, v in result.items()}


def flux_health(obj: dict[str, Any]) -> str:
    """InProgress, Failed or Current, as Flux's healthCheckExprs for the object's kind rule:
    inProgress first, then failed, then current; an expression that cannot be evaluated (a
    field not there yet) leaves the object in progress."""
    doc = yaml.safe_load(FLUX_KUSTOMIZATION.read_text())
    (check,) = [c for c in doc["spec"]["healthCheckExprs"] if c["kind"] == obj["kind"]]
    verdicts = (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current"))
    for key, verdict in verdicts:
        try:
            if cel.evaluate(check[key], obj) is True:
                return verdict
        except Exception:  # a missing field: Flux keeps waiting
            return "InProgress"
    return "InProgress"


def kstatus(obj: dict[str, Any]) -> str:
    """The status sigs.k8s.io/cli-utils kstatus (`status.Compute`) gives a custom resource: a
    deletionTimestamp is Terminating; an observedGeneration that differs from the generation
    is InProgress; then Reconciling=True is InProgress, Stalled=True is Failed; else (no
    type-specific rule for a custom resource) Ready=True is Current, Ready=False or Unknown
    InProgress; no condition to go by is Current."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if None not in (observed, generation) and observed != generation:
        return "InProgress"
    found = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if found.get("Reconciling") == "True":
        return "InProgress"
    if found.get("Stalled") == "True":
        return "Failed"
    ready = {"True": "Current", "False": "InProgress", "Unknown": "InProgress"}
    return ready.get(found.get("Ready") or "", "Current")
