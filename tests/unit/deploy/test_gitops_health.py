"""The shipped Argo CD health check and Flux expressions, and plain kstatus, on hand-built
objects (the integration test runs them on statuses the real operator wrote)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.gitops import ARGOCD_HEALTH, ROOT, argocd_health, flux_health, kstatus
from tradewind.operator.status import kstatus_conditions


def _obj(
    phase: str | None,
    kind: str = "TrainingRun",
    generation: int = 1,
    observed: int | None = 1,
    conditions: list[dict[str, Any]] | None = None,
    with_kstatus: bool = True,
) -> dict[str, Any]:
    """An object in `phase`, with the conditions the operator writes (`with_kstatus=False`:
    as an operator before Reconciling and Stalled wrote them)."""
    obj: dict[str, Any] = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "r", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if phase is not None:
        ready = phase in ("Running", "Succeeded")
        default = [
            {"type": "Ready", "status": str(ready), "reason": "R", "message": f"ready is {ready}"}
        ]
        if phase != "Pending":
            default.append({"type": phase, "status": "True", "reason": "P", "message": "why"})
        if with_kstatus:
            default += [
                {"type": type_, "status": str(value), "reason": reason, "message": message}
                for type_, value, reason, message in kstatus_conditions(phase, "P", "why")
            ]
        obj["status"] = {"phase": phase, "conditions": conditions or default}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


@pytest.mark.parametrize("kind", ["TrainingRun", "RLRun", "Sweep"])
@pytest.mark.parametrize(
    ("phase", "argocd", "flux", "plain_kstatus"),
    [
        ("Pending", "Progressing", "InProgress", "InProgress"),
        ("Running", "Progressing", "Current", "InProgress"),
        ("Restarting", "Progressing", "InProgress", "InProgress"),
        ("Succeeded", "Healthy", "Current", "Current"),
        ("Failed", "Degraded", "Failed", "Failed"),
        ("Suspended", "Suspended", "Current", "InProgress"),
    ],
)
def test_each_phase_maps_to_its_health(
    kind: str, phase: str, argocd: str, flux: str, plain_kstatus: str
) -> None:
    obj = _obj(phase, kind)
    assert argocd_health(obj)["status"] == argocd
    assert flux_health(obj) == flux
    assert kstatus(obj) == plain_kstatus


@pytest.mark.parametrize(
    ("phase", "plain_kstatus"),
    [
        ("Pending", "InProgress"),
        ("Running", "Current"),
        ("Succeeded", "Current"),
        ("Failed", "InProgress"),  # Ready=False: kstatus waits, never says Failed
        ("Suspended", "InProgress"),
    ],
)
def test_statuses_without_reconciling_and_stalled(phase: str, plain_kstatus: str) -> None:
    """As an older operator wrote them (a run that finished before the upgrade keeps its
    status): plain kstatus falls back to Ready; the shipped expressions do not need them."""
    obj = _obj(phase, with_kstatus=False)
    assert kstatus(obj) == plain_kstatus
    assert flux_health(obj) == flux_health(_obj(phase))


def test_the_message_is_the_condition_of_the_phase_else_ready() -> None:
    assert argocd_health(_obj("Failed"))["message"] == "Failed: why"
    assert argocd_health(_obj("Pending"))["message"] == "Pending: ready is False"


def test_no_status_yet_is_progressing() -> None:
    assert argocd_health(_obj(None))["status"] == "Progressing"
    assert flux_health(_obj(None)) == "InProgress"
    assert kstatus(_obj(None)) == "Current"  # kstatus's blind spot: nothing to go by yet


def test_a_status_older_than_the_spec_is_progressing_whatever_its_phase() -> None:
    stale = _obj("Succeeded", generation=3, observed=2)
    health = argocd_health(stale)
    assert health["status"] == "Progressing" and "generation 3" in health["message"]
    assert flux_health(stale) == "InProgress"
    assert kstatus(stale) == "InProgress"
    assert argocd_health(_obj("Succeeded", generation=3, observed=3))["status"] == "Healthy"


@pytest.mark.parametrize("reason", ["ImagePullFailure", "CreateFailed", "PodsRefused"])
def test_pods_that_cannot_start_are_degraded(reason: str) -> None:
    conditions = [{"type": "Ready", "status": "False", "reason": reason, "message": "pod x"}]
    assert argocd_health(_obj("Pending", conditions=conditions))["status"] == "Degraded"
    waiting = [{"type": "Ready", "status": "False", "reason": "PodsPending", "message": "1/2"}]
    assert argocd_health(_obj("Pending", conditions=waiting))["status"] == "Progressing"


def test_an_unknown_phase_is_unknown() -> None:
    assert argocd_health(_obj("Exploded"))["status"] == "Unknown"


def test_the_argocd_cm_snippet_carries_the_script_for_each_kind() -> None:
    snippet = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    script = ARGOCD_HEALTH.read_text()
    assert snippet["data"] == {
        f"resource.customizations.health.tradewind.dev_{kind}": script
        for kind in ("TrainingRun", "RLRun", "Sweep")
    }
