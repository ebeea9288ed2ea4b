"""The three custom resources and how they appear in Kubernetes (names, columns)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic_core import PydanticCustomError

from tradewind.api.base import GROUP, VERSION, ApiModel
from tradewind.api.rl import RLRunSpec
from tradewind.api.status import RunStatus, SweepStatus
from tradewind.api.sweep import SweepSpec
from tradewind.api.training import TrainingRunSpec

API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tradewind"


@dataclass(frozen=True)
class PrinterColumn:
    """A `kubectl get` column."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            out["priority"] = self.priority
        return out


PHASE = PrinterColumn(
    "Phase",
    "string",
    ".status.phase",
    "Pending, Running, Restarting, Suspended, Succeeded or Failed",
)
PROGRESS = PrinterColumn("Progress", "integer", ".status.progress.percent", "Percent complete")
METRIC = PrinterColumn("Metric", "string", ".status.headlineMetric", "Headline metric")
RESTARTS = PrinterColumn("Restarts", "integer", ".status.restarts", "Attempts restarted")
AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")


class ObjectMeta(ApiModel):
    """Kubernetes object metadata; only `name` is required."""

    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Resource name."""
    namespace: Annotated[str, Field(max_length=63)] | None = None
    """Namespace."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""


NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


class Resource(ApiModel):
    """Fields and Kubernetes naming shared by the three kinds."""

    api_version: Literal["tradewind.dev/v1alpha1"]
    """Always tradewind.dev/v1alpha1."""
    kind: str
    """The kind: TrainingRun, RLRun or Sweep."""
    metadata: ObjectMeta
    """Kubernetes object metadata."""

    max_name_length: ClassVar[int] = 63
    """metadata.name names the Service and the label values of every child, so it is a DNS
    label (Jobs and pod hostnames take a shortened form of long names: builders.STEM_MAX)."""
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    description: ClassVar[str]

    def check_semantics(self) -> None:
        name = self.metadata.name
        if len(name) > self.max_name_length or not re.fullmatch(NAME_PATTERN, name):
            raise PydanticCustomError(
                "resource_name",
                "{message}",
                {
                    "message": f"must be at most {self.max_name_length} characters of a-z, 0-9 "
                    "and '-', starting with a letter (it names Jobs, Services and pod hostnames)",
                    "field_path": ".metadata.name",
                },
            )


class TrainingRun(Resource):
    """Supervised training of a CNN / LSTM / hybrid CNN+LSTM trading model, with torchrun
    across `nodes` pods of `procsPerNode` processes."""

    kind: Literal["TrainingRun"]
    """Always TrainingRun."""
    spec: TrainingRunSpec = Field(default_factory=TrainingRunSpec)
    """What to train and how."""
    status: RunStatus | None = None
    """Observed state, written by the operator."""

    plural = "trainingruns"
    short_names = ("tr",)
    description = __doc__ or ""
    printer_columns = (
        PHASE,
        PrinterColumn("Ready", "integer", ".status.nodesReady", "Pods running"),
        PrinterColumn("Nodes", "integer", ".spec.nodes", "Pods (torchrun nodes)"),
        PROGRESS,
        METRIC,
        RESTARTS,
        AGE,
    )


class RLRun(Resource):
    """Reinforcement-learning agents (PPO, SAC, TD3, DQN, A2C) trained on a trading
    environment, optionally combined into an ensemble."""

    kind: Literal["RLRun"]
    """Always RLRun."""
    spec: RLRunSpec
    """Environment, agents and training."""
    status: RunStatus | None = None
    """Observed state, written by the operator."""

    plural = "rlruns"
    short_names = ("rl",)
    description = __doc__ or ""
    printer_columns = (
        PHASE,
        PrinterColumn("Ready", "integer", ".status.nodesReady", "Pods running"),
        PROGRESS,
        METRIC,
        RESTARTS,
        AGE,
    )


class Sweep(Resource):
    """A hyperparameter search (Optuna) over TrainingRuns or RLRuns: one child run per
    trial, pruned early when unpromising."""

    kind: Literal["Sweep"]
    """Always Sweep."""
    spec: SweepSpec
    """Template, search space, objective and budget."""
    status: SweepStatus | None = None
    """Observed state, written by the operator."""

    plural = "sweeps"
    short_names = ("sw",)
    description = __doc__ or ""
    printer_columns = (
        PHASE,
        PrinterColumn("Completed", "integer", ".status.trials.completed", "Trials completed"),
        PrinterColumn("Running", "integer", ".status.trials.running", "Trials running"),
        PrinterColumn("Pruned", "integer", ".status.trials.pruned", "Trials pruned"),
        PrinterColumn("Max", "integer", ".spec.maxTrials", "Trials to run"),
        PrinterColumn("Best", "number", ".status.bestValue", "Best objective value"),
        PrinterColumn(
            "DSR",
            "number",
            ".status.bestTrial.sharpe.deflated",
            "Deflated Sharpe Ratio of the best trial, given the trials tried",
        ),
        AGE,
    )
    max_name_length = 58  # trial runs are named <sweep>-<trial number> (maxTrials <= 10000)


KINDS: dict[str, type[Resource]] = {k.__name__: k for k in (TrainingRun, RLRun, Sweep)}
