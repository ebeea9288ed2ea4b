"""Who suspends a run's Job, and Kueue: pure helpers (no cluster).

The operator resumes only a Job it suspended itself for the run's `spec.suspend`, marked with
SUSPENDED_BY_RUN_LABEL; a Job suspended by anything else is left alone and the run says it
waits.

A run labelled `kueue.x-k8s.io/queue-name` is queued: its Jobs carry the label and are created
suspended, and Kueue un-suspends a Job when its Workload is admitted (quota reserved in a
ClusterQueue). The operator never un-suspends a queued run's Job, and never suspends one
either (Kueue would un-suspend an admitted Job at once): `spec.suspend` deletes the attempt's
Jobs, which releases their quota, and a resume creates them again, suspended, at the back of
the queue. A restart's new Job queues the same way. See docs/kueue.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradewind.api import GROUP
from tradewind.operator.builders import QUEUE_LABEL, Run

SUSPENDED_BY_RUN_LABEL = f"{GROUP}/suspended-by-run"
"""On a Job the operator suspended for its run's spec.suspend: "true"; "false" once resumed."""

JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Kueue's label on the Workload of a Job: the Job's uid."""
WORKLOAD_GROUP = "kueue.x-k8s.io"
WORKLOAD_VERSIONS = ("v1beta2", "v1beta1")
"""Versions of the Workload API tried in turn: Kueue >= 0.15 serves v1beta2, older only
v1beta1."""
WAITING_REASON = "WaitingForQuota"
ADMITTED_CONDITION = "Admitted"
"""The run's condition for a queued run: whether Kueue admitted its current Job."""


def queue_name(run: Run) -> str | None:
    """The LocalQueue a run is queued in, if any."""
    return (run.metadata.labels or {}).get(QUEUE_LABEL) or None


def workload_message(workload: Mapping[str, Any]) -> str:
    """What Kueue says of a Workload it has not admitted: the message of its QuotaReserved
    condition if False (e.g. "couldn't assign flavors to pod set main: insufficient quota
    for nvidia.com/gpu ..."), else of its Admitted condition if False (quota reserved,
    admission checks pending); "" if neither says anything."""
    conditions = {c.get("type"): c for c in workload.get("status", {}).get("conditions") or []}
    for type_ in ("QuotaReserved", "Admitted"):
        cond = conditions.get(type_)
        if cond is not None and cond.get("status") == "False" and cond.get("message"):
            return str(cond["message"])
    return ""


def waiting_message(queue: str, attempt: int, kueue_says: str) -> str:
    """The run's condition message while its Job waits for Kueue."""
    text = f"waiting for Kueue to admit the Job of attempt {attempt} (LocalQueue {queue})"
    return f"{text}: {kueue_says}" if kueue_says else text


NO_WORKLOAD = (
    "Kueue has made no Workload for it yet: is Kueue running, and does the LocalQueue exist?"
)
"""The admission message when the Job has no Workload some seconds after its creation."""


def suspended_elsewhere_message(attempt: int) -> str:
    """The condition message of a run whose Job something else suspended (not Kueue by the
    run's queue label, nor the run's own spec.suspend)."""
    return (
        f"the Job of attempt {attempt} is suspended by another controller (the run's "
        "spec.suspend is false); waiting for it to be resumed"
    )
