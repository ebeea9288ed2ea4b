"""Who a run is, as MLflow and a Sweep know it: the identity tags the trainers write, and the
labels and annotation a Sweep puts on its trials' runs (the trainers turn them into tags).

A run's own `tracking.tags` cannot hold these (`RESERVED_TAG_PREFIXES`): the operator finds a
run's progress, checkpoints and a trial's objective in MLflow by them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradewind.api.base import GROUP

if TYPE_CHECKING:
    from tradewind.api.resources import RLRun, TrainingRun

SWEEP_LABEL = f"{GROUP}/sweep"
"""On each child run of a Sweep: the name of its Sweep."""
TRIAL_LABEL = f"{GROUP}/trial"
"""On each child run: its Optuna trial number (what an operator restart maps it back by)."""
PARENT_RUN_ANNOTATION = f"{GROUP}/mlflow-parent-run"
"""On each child run: the MLflow run id of its Sweep's run (the trial's run nests under it)."""

RESERVED_TAG_PREFIXES = ("tradewind.", "mlflow.")
"""MLflow tag prefixes only Tradewind and MLflow write: identity, checkpoints, nesting."""
ALLOWED_MLFLOW_TAGS = ("mlflow.note.content",)
"""MLflow tags a user may set all the same: the run's description in MLflow's UI."""


def mlflow_tags(run: TrainingRun | RLRun, **extra: str) -> dict[str, str]:
    """A run's MLflow tags: the user's first, then its identity (kind, name, namespace, its
    Sweep and trial, the parent run, `extra`), which nothing the user sets can replace."""
    meta = run.metadata
    labels, annotations = meta.labels or {}, meta.annotations or {}
    identity: dict[str, str | None] = {
        "tradewind.kind": run.kind,
        "tradewind.name": meta.name,
        "tradewind.namespace": meta.namespace or "",
        "tradewind.sweep": labels.get(SWEEP_LABEL),
        "tradewind.trial": labels.get(TRIAL_LABEL),
        "mlflow.parentRunId": annotations.get(PARENT_RUN_ANNOTATION),
        **extra,
    }
    return {**run.spec.tracking.tags, **{k: v for k, v in identity.items() if v is not None}}
