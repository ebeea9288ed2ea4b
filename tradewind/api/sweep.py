"""Sweep: an Optuna study over TrainingRuns or RLRuns, one child run per trial."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from tradewind.api.base import ApiModel, CelRule, ShortStr, immutable
from tradewind.api.rl import RLRunSpec
from tradewind.api.spec_paths import SpecPathError, check_path, set_path
from tradewind.api.training import TrainingRunSpec

MAX_GRID_POINTS = 10_000
"""The most points a grid Sweep may have: no more trials can run (maxTrials), and Optuna's
grid sampler holds every point."""
WHOLE_SPEC_SAMPLES = 3
"""Values of each parameter that validation applies to the whole template (the first, the
last and one between); every value is checked against its field's own type."""


class TrainingRunTemplate(ApiModel):
    """A TrainingRun spec each trial starts from."""

    kind: Literal["TrainingRun"]
    """Kind of the trial runs."""
    spec: TrainingRunSpec = Field(default_factory=TrainingRunSpec)
    """Spec of the trial runs before the trial's parameters are applied."""


class RLRunTemplate(ApiModel):
    """An RLRun spec each trial starts from."""

    kind: Literal["RLRun"]
    """Kind of the trial runs."""
    spec: RLRunSpec
    """Spec of the trial runs before the trial's parameters are applied."""


_TEMPLATE_SCHEMA = {
    "type": "object",
    "description": "The run each trial starts from: `kind` (TrainingRun or RLRun) and its "
    "`spec`, checked against that kind's schema by the operator and `tradewind validate`.",
    "required": ["kind"],
    "properties": {
        "kind": {
            "type": "string",
            "enum": ["TrainingRun", "RLRun"],
            "description": "Kind of the trial runs.",
        },
        "spec": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "Spec of the trial runs before the trial's parameters are applied.",
        },
    },
}

Template = Annotated[
    TrainingRunTemplate | RLRunTemplate,
    Field(discriminator="kind"),
    WithJsonSchema(_TEMPLATE_SCHEMA),
]


class Objective(ApiModel):
    """A metric the study optimises."""

    metric: ShortStr
    """Metric name as the trial logs it, e.g. `val_loss`, `val_accuracy`, `cv_sharpe`,
    `eval_mean_reward`. Not a figure of the test data the best trial is reported on
    (`test_*`, `backtest_*`, an RLRun's `<agent>_*` and `ensemble_*`)."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether lower or higher is better."""

    cel_rules = (
        CelRule(
            "!self.metric.startsWith('test_') && !self.metric.startsWith('backtest_')",
            "test_* and backtest_* are measured on the test data the best trial is reported "
            "on, so a Sweep may not choose on them: choose on validation or folds (val_*, "
            "cv_*, walk_forward_*; an RLRun's eval_*)",
            ".metric",
        ),
    )


class Parameter(ApiModel):
    """The distribution of one searched field."""

    type: Literal["uniform", "loguniform", "int", "choice", "grid"]
    """uniform / loguniform floats in [low, high], int in [low, high] (optional step, log),
    choice among values, grid over values (with sampler grid)."""
    low: float | None = None
    """Lower bound (uniform, loguniform, int)."""
    high: float | None = None
    """Upper bound (uniform, loguniform, int)."""
    step: float | None = Field(default=None, gt=0)
    """Step between values (uniform, int)."""
    log: bool = False
    """Sample an int on a log scale."""
    values: list[Any] | None = Field(default=None, min_length=1, max_length=256)
    """Candidate values (choice, grid)."""

    def check_semantics(self) -> None:
        # Not CEL: the apiserver's CEL cannot see a list of untyped (mixed) values.
        wants_values = self.type in ("choice", "grid")
        if wants_values != (self.values is not None):
            message = (
                "choice and grid need values"
                if wants_values
                else "values is only for choice and grid"
            )
            raise PydanticCustomError(
                "values", "{message}", {"message": message, "field_path": ".values"}
            )

    cel_rules = (
        CelRule(
            "!(self.type in ['uniform', 'loguniform', 'int']) || (has(self.low) && has(self.high))",
            "uniform, loguniform and int need low and high",
        ),
        CelRule(
            "!has(self.low) || !has(self.high) || self.low < self.high",
            "low must be less than high",
            ".low",
        ),
        CelRule(
            "!(self.type == 'loguniform' || (self.type == 'int' && self.log)) || "
            "!has(self.low) || self.low > 0.0",
            "a log scale needs low > 0",
            ".low",
        ),
        CelRule(
            "!has(self.step) || self.type == 'uniform' || (self.type == 'int' && !self.log)",
            "step is only for uniform, and for int without a log scale",
            ".step",
        ),
        CelRule(
            "!(self.type in ['choice', 'grid']) || (!has(self.low) && !has(self.high))",
            "choice and grid take values, not low/high",
        ),
        CelRule(
            "self.type != 'int' || ((!has(self.low) || self.low == double(int(self.low))) && "
            "(!has(self.high) || self.high == double(int(self.high))))",
            "int bounds must be whole numbers",
            ".low",
        ),
    )

    def sample_values(self) -> list[Any]:
        """Values that span the distribution, used to check the template accepts them."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return [int(self.low), int(self.high)]
        # An off-grid midpoint too, so a float range on an integer field is caught.
        return [self.low, self.high, self.low + (self.high - self.low) * 0.37]


class PrunerSpec(ApiModel):
    """Stops unpromising trials early from their intermediate values (one per epoch or
    evaluation)."""

    type: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    """none; median (MedianPruner); successive_halving (asynchronous successive halving,
    ASHA); hyperband."""
    min_resource: int = Field(default=1, ge=1)
    """successive_halving, hyperband: epochs/evaluations before the first rung."""
    reduction_factor: int = Field(default=3, ge=2, le=16)
    """successive_halving, hyperband: 1/reductionFactor of trials survive each rung."""
    max_resource: int | None = Field(default=None, ge=1)
    """hyperband: the most epochs/evaluations a trial runs; unset infers it."""
    warmup_steps: int = Field(default=0, ge=0)
    """median: intermediate steps before a trial may be pruned."""
    startup_trials: int = Field(default=5, ge=0)
    """median: trials completed before pruning starts."""


class SweepSpec(ApiModel):
    """A hyperparameter search: a template run, the fields to search and the objective."""

    template: Template
    """The run each trial starts from."""
    objective: Objective | None = None
    """Single objective; set this or `objectives`."""
    objectives: list[Objective] | None = Field(default=None, min_length=2, max_length=4)
    """Several objectives (a multi-objective study; the result is the Pareto front)."""
    search_space: dict[Annotated[str, Field(max_length=256)], Parameter] = Field(
        min_length=1, max_length=32
    )
    """Dotted spec path -> distribution, e.g. `training.optimizer.learningRate:
    {type: loguniform, low: 1e-4, high: 1e-2}`; list items by index or name,
    `agents[ppo].hyperparameters.gamma`."""
    sampler: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    """Optuna sampler."""
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    """Early stopping of trials."""
    max_trials: int = Field(default=20, ge=1, le=10_000)
    """Trials to run in total."""
    parallelism: int = Field(default=2, ge=1, le=256)
    """Trials running at once."""
    max_failed_trials: int = Field(default=3, ge=0, le=10_000)
    """Stop the sweep (Failed) after this many failed trials."""
    timeout_seconds: int | None = Field(default=None, ge=1)
    """Start no new trial once this long has passed since the first trial started (also
    across an operator restart or a resumed local sweep)."""
    seed: int = Field(default=0, ge=0)
    """Sampler seed."""

    cel_rules = (
        *immutable("template", "searchSpace", "sampler"),
        CelRule(
            "has(self.objective) != has(self.objectives)",
            "set exactly one of objective and objectives",
            ".objective",
        ),
        CelRule(
            "!has(self.objectives) || self.pruner.type == 'none'",
            "multi-objective studies cannot prune: set pruner.type none",
            ".pruner.type",
        ),
        CelRule(
            "self.sampler == 'grid' ? self.searchSpace.all(k, self.searchSpace[k].type == 'grid')"
            " : self.searchSpace.all(k, self.searchSpace[k].type != 'grid')",
            "sampler grid needs every parameter of type grid, "
            "and grid parameters need sampler grid",
            ".sampler",
        ),
        CelRule(
            "self.parallelism <= self.maxTrials",
            "parallelism must not exceed maxTrials",
            ".parallelism",
        ),
    )

    def check_semantics(self) -> None:
        self._check_grid_size()
        self._check_rl_objectives()
        spec_model = type(self.template.spec)
        spec = self.template.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        for path, param in self.search_space.items():
            where = f".searchSpace[{path}]"  # path holds dots: keep it in one segment
            try:
                field = check_path(spec_model, spec, path)
                values = param.sample_values()
                # Every value against the field's own type; a few against the whole
                # template (its cross-field rules): validating the template once per value
                # cost seconds for a few parameters of 256 values.
                if field is not None:
                    for value in values:
                        _field_adapter(field).validate_python(value)
                for value in _spread(values, WHOLE_SPEC_SAMPLES):
                    spec_model.model_validate(set_path(spec, path, value))
            except SpecPathError as exc:
                raise PydanticCustomError(
                    "search_path", "{message}", {"message": str(exc), "field_path": where}
                ) from None
            except ValidationError as exc:
                err = exc.errors()[0]
                raise PydanticCustomError(
                    "search_value",
                    "{message}",
                    {
                        "message": f"the template rejects a value of this parameter: {err['msg']}",
                        "field_path": where,
                    },
                ) from None

    def _check_rl_objectives(self) -> None:
        """An RLRun's combine step scores its agents, the ensemble and buy-and-hold on the
        test market only (`<name>_*`); and each agent logs its validation figures (`eval_*`)
        under the same names, so with several agents a trial's value would be any one's."""
        if not isinstance(self.template, RLRunTemplate):
            return
        agents = [agent.name for agent in self.template.spec.agents]
        single = self.objective is not None
        for index, objective in enumerate([self.objective] if single else self.objectives or []):
            assert objective is not None
            where = ".objective.metric" if single else f".objectives[{index}].metric"
            tested = [
                p
                for p in (*agents, "ensemble", "buy_and_hold")
                if objective.metric.startswith(f"{p}_")
            ]
            if tested:
                message = (
                    f"{objective.metric} is the combine step's figure on the test market, where "
                    "the best trial is reported: choose on the agent's validation figures (eval_*)"
                )
            elif len(agents) > 1:
                message = (
                    f"the template's {len(agents)} agents each log {objective.metric} under that "
                    "name, so a trial's value would be any one of theirs: sweep a template with "
                    "one agent"
                )
            else:
                continue
            raise PydanticCustomError(
                "rl_objective", "{message}", {"message": message, "field_path": where}
            )

    def _check_grid_size(self) -> None:
        if self.sampler != "grid":
            return
        points = math.prod(len(p.values or ()) for p in self.search_space.values())
        if points > MAX_GRID_POINTS:
            message = (
                f"the grid has {points} points (the product of the parameters' numbers of "
                f"values); at most {MAX_GRID_POINTS}: fewer values, or sampler random or tpe"
            )
            raise PydanticCustomError(
                "grid_size", "{message}", {"message": message, "field_path": ".searchSpace"}
            )

    def trial_spec(self, params: dict[str, Any]) -> dict[str, Any]:
        """The template spec with a trial's parameters applied."""
        spec = self.template.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        for path, value in params.items():
            spec = set_path(spec, path, value)
        return spec


def _spread(values: list[Any], most: int) -> list[Any]:
    """At most `most` of `values`, the first and the last among them."""
    if len(values) <= most:
        return values
    picks = {round(i * (len(values) - 1) / (most - 1)) for i in range(most)}
    return [values[i] for i in sorted(picks)]


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _field_adapter(field: FieldInfo) -> TypeAdapter[Any]:
    """A validator of one model field's values (its type and constraints), built once (by
    id: the API models' fields live as long as the models)."""
    adapter = _ADAPTERS.get(id(field))
    if adapter is None:
        annotation: Any = field.annotation
        if field.metadata:  # the field's constraints (ge, le, max_length, ...)
            annotation = Annotated.__class_getitem__((annotation, *field.metadata))  # type: ignore[attr-defined]
        adapter = _ADAPTERS[id(field)] = TypeAdapter(annotation)
    return adapter
