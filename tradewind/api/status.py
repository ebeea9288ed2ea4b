"""Status of runs and sweeps: what `kubectl get` and `kubectl describe` show.

Written by the operator only (the status subresource); users never set it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from tradewind.api.base import ApiModel, ShortStr

RunPhase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
Metrics = dict[Annotated[str, Field(max_length=250)], float]
CUT_MARK = "..."


def cut_to(limit: int) -> Callable[[Any], Any]:
    """A validator that cuts a string longer than `limit` (marked with CUT_MARK): what the
    operator writes into a status (messages from pods, the apiserver, MLflow) never makes
    the status invalid, which would fail every later write of it."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit - len(CUT_MARK)] + CUT_MARK
        return value

    return cut


Reason = Annotated[str, BeforeValidator(cut_to(1024)), Field(max_length=1024)]
Message = Annotated[str, BeforeValidator(cut_to(32768)), Field(max_length=32768)]
Headline = Annotated[str, BeforeValidator(cut_to(256)), Field(max_length=256)]
RunId = Annotated[str, BeforeValidator(cut_to(64)), Field(max_length=64)]
StudyName = Annotated[str, BeforeValidator(cut_to(512)), Field(max_length=512)]
LongText = Annotated[str, BeforeValidator(cut_to(4096)), Field(max_length=4096)]


class Condition(ApiModel):
    """A Kubernetes-style condition (Created, Running, Restarting, Suspended, Succeeded,
    Failed, Ready, and kstatus's Reconciling and Stalled; Admitted for a run queued in Kueue:
    whether Kueue admitted its current Job)."""

    type: ShortStr
    """Condition type."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Reason = ""
    """One CamelCase word for the cause, e.g. OOMKilled, DeadlineExceeded."""
    message: Message = ""
    """Human-readable details naming the cause."""
    last_transition_time: dt.datetime | None = None
    """When status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was set for."""


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class Progress(ApiModel):
    """How far the run is."""

    epoch: int | None = Field(default=None, ge=0)
    """Epochs done (TrainingRun)."""
    total_epochs: int | None = Field(default=None, ge=0)
    """Epochs planned (TrainingRun)."""
    step: int | None = Field(default=None, ge=0)
    """Optimizer steps (TrainingRun) or environment timesteps (RLRun) done."""
    total_steps: int | None = Field(default=None, ge=0)
    """Steps planned."""
    percent: int = Field(default=0, ge=0, le=100)
    """Percent complete."""


class CheckpointStatus(ApiModel):
    """Where the run's checkpoints are."""

    latest: LongText | None = None
    """URI of the newest checkpoint (an attempt restart resumes from it)."""
    best: LongText | None = None
    """URI of the checkpoint with the best validation metric."""


class MLflowStatus(ApiModel):
    """The run in MLflow."""

    run_id: RunId | None = None
    """MLflow run id."""
    url: LongText | None = None
    """Link to the run in the MLflow UI."""


class RunStatus(ApiModel):
    """Observed state of a TrainingRun or RLRun."""

    phase: RunPhase = "Pending"
    """Pending, Running, Restarting, Suspended, Succeeded or Failed."""
    conditions: Conditions
    """Conditions, including Ready, a terminal Succeeded or Failed, and kstatus's Reconciling
    (True while Pending, Running or Restarting) and Stalled (True once Failed)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the current attempt's pods run: a change of a lifecycle
    field (maxRestarts, suspend, deadlines, failurePolicy, cleanPodPolicy, TTL) is observed
    at once, a change of any other field once the new attempt it rolls is created. A
    finished run observes every change at once (it starts no attempt)."""
    start_time: dt.datetime | None = None
    """When the first attempt's Job started (its pods were created; not while Kueue held it
    queued): activeDeadlineSeconds counts from here."""
    completion_time: dt.datetime | None = None
    """When the run succeeded or failed."""
    attempt: int = Field(default=0, ge=0)
    """Current attempt (0-based); each restart, disruption or spec change starts a new one."""
    restarts: int = Field(default=0, ge=0)
    """Attempts torn down and restarted after a failure so far (against maxRestarts)."""
    disruptions: int = Field(default=0, ge=0)
    """Attempts restarted after a disruption of one of their pods (eviction, preemption, node
    drain or pressure: the pod's DisruptionTarget condition); not counted against
    maxRestarts."""
    last_failed_attempt: int | None = Field(default=None, ge=0)
    """The last attempt that failed (an exit code, a pod or Job failure; not one disrupted,
    timed out or rolled for a spec change): with cleanPodPolicy Running (the default) its Job
    and its finished pods are kept for `kubectl logs`."""
    attempt_spec_hash: Annotated[str, Field(max_length=64)] | None = None
    """Hash of the spec (all but its lifecycle fields) the current attempt was created from:
    when the spec's differs, the operator rolls a new attempt (reason SpecChanged)."""
    nodes_ready: int = Field(default=0, ge=0)
    """Pods of the current attempt that are running."""
    nodes_total: int = Field(default=0, ge=0)
    """Pods of the current attempt."""
    progress: Progress = Field(default_factory=Progress)
    """Progress."""
    headline_metric: Headline | None = None
    """The main metric, e.g. `val_loss=0.4123`, as shown by `kubectl get`."""
    metrics: Metrics = Field(default_factory=dict, max_length=128)
    """Latest metrics read from MLflow."""
    checkpoint: CheckpointStatus = Field(default_factory=CheckpointStatus)
    """Checkpoint URIs."""
    mlflow: MLflowStatus = Field(default_factory=MLflowStatus)
    """MLflow run."""


class TrialCounts(ApiModel):
    """Trials by state."""

    pending: int = Field(default=0, ge=0)
    """Asked from the study, child run not yet running."""
    running: int = Field(default=0, ge=0)
    """Child run running."""
    completed: int = Field(default=0, ge=0)
    """Finished and told to the study."""
    pruned: int = Field(default=0, ge=0)
    """Stopped by the pruner."""
    failed: int = Field(default=0, ge=0)
    """Child run failed."""


class SharpeSummary(ApiModel):
    """A trial's annualised Sharpe ratio on its test split (a TrainingRun's backtest; an
    RLRun's ensemble, or its first agent without one) and how far to believe it."""

    value: float
    """Annualised Sharpe ratio."""
    ci_low: float
    """Lower bound of its 95% interval (stationary bootstrap: autocorrelation kept)."""
    ci_high: float
    """Upper bound of its 95% interval."""
    psr: float = Field(ge=0, le=1)
    """Probabilistic Sharpe Ratio: P(true Sharpe > 0), from its length, skew and kurtosis."""
    deflated: float = Field(ge=0, le=1)
    """Deflated Sharpe Ratio: P(true Sharpe > the best Sharpe that `trials` skill-less trials
    would show by luck). Below 0.95, the search may explain the result."""
    trials: int = Field(ge=0)
    """Trials the deflation counts as tried (completed, pruned, and failed after reporting)."""
    periods: int = Field(ge=0)
    """Returns the Sharpe ratio was estimated on."""


class TrialSummary(ApiModel):
    """One trial's parameters and result."""

    name: ShortStr
    """Name of the child run."""
    number: int = Field(ge=0)
    """Optuna trial number."""
    params: dict[Annotated[str, Field(max_length=256)], Any] = Field(
        default_factory=dict, max_length=32
    )
    """Parameter values (searchSpace path -> value)."""
    values: list[float] = Field(default_factory=list, max_length=4)
    """Objective values, in the order of the objectives."""
    sharpe: SharpeSummary | None = None
    """Its Sharpe ratio with interval, PSR and Deflated Sharpe Ratio, when its run logged one."""


class SweepStatus(ApiModel):
    """Observed state of a Sweep."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    """Pending, Running, Succeeded (maxTrials reached or timeout) or Failed."""
    conditions: Conditions
    """Conditions, including Ready, a terminal Succeeded or Failed, and kstatus's Reconciling
    (True while Pending or Running) and Stalled (True once Failed)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on."""
    start_time: dt.datetime | None = None
    """When the first trial started."""
    completion_time: dt.datetime | None = None
    """When the sweep finished."""
    trials: TrialCounts = Field(default_factory=TrialCounts)
    """Trials by state."""
    best_trial: TrialSummary | None = None
    """Best trial so far (single objective)."""
    best_value: float | None = None
    """Objective value of the best trial, as shown by `kubectl get`."""
    pareto_front: list[TrialSummary] = Field(default_factory=list, max_length=64)
    """Pareto-optimal trials (multi-objective)."""
    study_name: StudyName | None = None
    """Name of the Optuna study."""
    mlflow: MLflowStatus = Field(default_factory=MLflowStatus)
    """The sweep's parent run in MLflow."""
