"""What a failed pod means for its run: a disruption (restart, not counted), a permanent
failure (no restart), or a failure worth a restart (counted against maxRestarts)."""

from __future__ import annotations

from typing import Any

from tradewind.api.common import FailurePolicy
from tradewind.operator.observed import DISRUPTION_TARGET

TRAINER_EXIT_REASONS = {
    64: "InvalidConfig",
    65: "NonFiniteLoss",
    66: "DataNotFound",
    67: "OutOfMemory",
}
"""The built-in trainer's exit codes that no restart can fix (see tradewind.trainer.entrypoint)
and the reason each fails a run with, when it is in failurePolicy.permanentExitCodes."""
PERMANENT_EXIT_CODE = "PermanentExitCode"
"""The reason of any other permanent exit code."""
OOM_EXIT_CODE = 137


def permanent_reason(exit_code: int | None, reason: str, policy: FailurePolicy) -> str | None:
    """The reason a failed container's run fails without a restart, or None if it is
    retried. A container the kubelet OOMKilled would run out of memory again (unless 137 is
    retryable); a failure without an exit code is the cluster's doing: retried."""
    if reason == "OOMKilled" and OOM_EXIT_CODE not in policy.retryable_exit_codes:
        return "OutOfMemory"
    if exit_code is None:
        return None
    if exit_code in policy.permanent_exit_codes:
        return TRAINER_EXIT_REASONS.get(exit_code, PERMANENT_EXIT_CODE)
    if policy.retryable_exit_codes and exit_code not in policy.retryable_exit_codes:
        return PERMANENT_EXIT_CODE
    return None


def disruption(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) if the cluster is stopping this pod for reasons of its own: its
    DisruptionTarget condition (eviction, preemption, taint manager, PodGC, the kubelet), or
    the kubelet evicted it (status.reason Evicted). Not when the kubelet evicted it for
    exceeding its own limits (ephemeral storage): that pod would be evicted again. Nor for a
    pod that had succeeded: its work is done (PodGC removes such pods of a deleted node)."""
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == DISRUPTION_TARGET and condition.get("status") == "True":
            found = (condition.get("reason") or DISRUPTION_TARGET, condition.get("message") or "")
            break
    else:
        if status.get("reason") != "Evicted":
            return None
        found = ("Evicted", status.get("message") or "")
    return None if _own_limit(found[1]) else found


def _own_limit(message: str) -> bool:
    """The kubelet's eviction message for a pod over its own limits ("... exceeds the limit",
    "exceeded its local ephemeral storage limit"), not the node's pressure ("The node was low
    on resource")."""
    return "exceed" in message.lower()
