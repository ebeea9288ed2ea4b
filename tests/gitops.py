"""The shipped GitOps health checks, evaluated the way Argo CD and Flux evaluate them: the
Argo CD Lua script (deploy/argocd/health.lua) in Lua 5.1 through lupa (Argo CD runs
gopher-lua, a Lua 5.1), and the Flux CEL expressions (deploy/flux/kustomization.yaml)."""

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
