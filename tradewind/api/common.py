"""Spec pieces shared by TrainingRun and RLRun: pods, data, checkpoints, tracking, lifecycle."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tradewind.api.base import ApiModel, CelRule, ShortStr
from tradewind.api.identity import ALLOWED_MLFLOW_TAGS, RESERVED_TAG_PREFIXES

# The pod models live in tradewind/api/pods.py; the `X as X` ones are re-exported here.
from tradewind.api.pods import RESERVED_ENV_NAMES as RESERVED_ENV_NAMES
from tradewind.api.pods import RESERVED_ENV_PREFIXES as RESERVED_ENV_PREFIXES
from tradewind.api.pods import Accelerator, GangScheduling, PodTemplateOverride, ResourceList
from tradewind.api.pods import EnvVar as EnvVar
from tradewind.api.pods import LocalObjectReference as LocalObjectReference
from tradewind.api.pods import Toleration as Toleration
from tradewind.api.pods import Volume as Volume
from tradewind.api.pods import VolumeMount as VolumeMount

BUNDLED_DATASETS = ("stocks", "indices", "eurusd", "synthetic")
"""Datasets shipped inside Python packages, so the examples run offline:
`stocks` — daily OHLCV of AAPL, IBM, MSFT, GOOG, FB (bokeh-sampledata, public domain);
`indices` — daily S&P 500 and NASDAQ (arch); `eurusd` — hourly EURUSD (gym-anytrading);
`synthetic` — a seeded regime-switching generator for any number of symbols and bars."""

FEATURES = (
    "returns",
    "log_returns",
    "sma",
    "ema",
    "rsi",
    "macd",
    "bollinger",
    "atr",
    "obv",
    "realized_volatility",
    "volume_zscore",
    "high_low_range",
    "ohlcv",
)
EXTENSION_NAME = r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+"
"""An extension's name, `<package>.<name>` (see tradewind.extensions): the operator accepts
any such name; the trainer and the CLI check it against the installed entry points."""
MAX_EXTENSION_FEATURES = 16


def builtin_or_extension(builtins: tuple[str, ...]) -> tuple[AfterValidator, WithJsonSchema]:
    """Annotations of a name that is one of `builtins` or an extension's `<package>.<name>`:
    a pattern in the CRD, and in Python an error that lists the built-ins."""
    pattern = rf"^({'|'.join(builtins)}|{EXTENSION_NAME})$"
    expected = ", ".join(repr(b) for b in builtins)

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise PydanticCustomError(
                "builtin_or_extension",
                "Input should be {expected}, or an extension's <package>.<name>",
                {"expected": expected},
            )
        return value

    schema = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": pattern}
    return AfterValidator(check), WithJsonSchema(schema)


_FEATURE_CHECK, _FEATURE_SCHEMA = builtin_or_extension(FEATURES)
Feature = Annotated[str, Field(min_length=1, max_length=253), _FEATURE_CHECK, _FEATURE_SCHEMA]
"""A built-in feature (FEATURES) or an extension's, `<package>.<name>`."""
Execution = Literal["next_close", "next_open"]
"""Fill price of a decision made at bar t: the close or the open of bar t+1."""


def check_extension(
    info: ValidationInfo,
    kind: str,
    name: str,
    field_path: str,
    params: dict[str, Any] | None = None,
) -> None:
    """Check an extension's name (at `field_path`) and its params (at `<field_path's
    parent>.params`) against the registry in the validation context (`{"extensions":
    tradewind.extensions.registry()}`); without one (the operator) any dotted name passes."""
    registry = (info.context or {}).get("extensions")
    if registry is None or not re.fullmatch(EXTENSION_NAME, name):
        return
    problem = registry.problem(kind, name, params)
    if problem is None:
        return
    where, message = problem
    path = field_path if where is None else field_path.rsplit(".", 1)[0] + ".params" + where
    raise PydanticCustomError("extension", "{message}", {"message": message, "field_path": path})


DEFAULT_FEATURES: list[Feature] = ["returns", "log_returns", "rsi", "macd", "bollinger", "atr"]


# --- data ----------------------------------------------------------------------------------


MAX_SYNTHETIC_BARS = 20_000_000
"""Synthetic data's bars over all symbols at most (a few GB with its features and windows)."""


class SyntheticData(ApiModel):
    """Settings of the seeded synthetic generator (regime-switching returns with volatility
    clustering), used when `source` is `synthetic`."""

    num_symbols: int = Field(default=4, ge=1, le=5000)
    """How many symbols to generate (named SYN0000, SYN0001, ...)."""
    num_bars: int = Field(default=5000, ge=100, le=50_000_000)
    """Bars per symbol, at the data's `interval`."""
    seed: int = Field(default=0, ge=0)
    """Generator seed; the same seed gives the same prices."""

    cel_rules = (
        CelRule(
            # unset fields take the defaults (4, 5000): the apiserver does not fill them in
            "(has(self.numSymbols) ? self.numSymbols : 4) * "
            f"(has(self.numBars) ? self.numBars : 5000) <= {MAX_SYNTHETIC_BARS}",
            f"numSymbols x numBars is at most {MAX_SYNTHETIC_BARS} bars "
            "(e.g. 100 symbols x 200000 bars): the whole market is generated in memory",
            ".numBars",
        ),
    )


class DataSource(ApiModel):
    """Where market data comes from and which part of it to use."""

    source: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            pattern=rf"^(stocks|indices|eurusd|synthetic|file://.+|s3://[a-z0-9][-a-z0-9.]*/.+"
            rf"|{EXTENSION_NAME})$",
        ),
    ] = "stocks"
    """A bundled dataset (`stocks`, `indices`, `eurusd`, `synthetic`), a `file://` or
    `s3://bucket/key` URI of a CSV or Parquet file with columns
    symbol,timestamp,open,high,low,close,volume, or an extension's data source,
    `<package>.<name>` (entry point group `tradewind.data_sources`)."""
    symbols: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=list, max_length=512
    )
    """Symbols to use; empty means every symbol in the source."""
    start: dt.date | None = None
    """First date to use (inclusive), YYYY-MM-DD."""
    end: dt.date | None = None
    """Last date to use (inclusive), YYYY-MM-DD."""
    interval: Literal["1m", "5m", "15m", "1h", "1d"] = "1d"
    """Bar interval; coarser than the source's bars resamples."""
    features: list[Feature] = Field(
        default_factory=lambda: list(DEFAULT_FEATURES),
        min_length=1,
        max_length=len(FEATURES) + MAX_EXTENSION_FEATURES,
    )
    """Engineered features computed per symbol: returns, log_returns, sma, ema, rsi, macd,
    bollinger, atr, obv, realized_volatility, volume_zscore, high_low_range, ohlcv (the bar
    itself as 5 scale-free channels: open and close returns, high and low to the close, log
    volume), or an extension's, `<package>.<name>` (entry point group `tradewind.features`)."""
    normalization: Literal["robust", "zscore", "minmax", "none"] = "robust"
    """Feature scaling, fitted on the training split only."""
    execution: Execution = "next_close"
    """When a decision made with the bars up to t fills: `next_close` at the close of bar
    t+1, `next_open` at the open of bar t+1 (never at bar t itself). Labels, regression
    targets, backtests, walk-forward and CV folds and the RL environment all earn the return
    from that fill to the next one, so they agree on what a signal can earn."""
    synthetic: SyntheticData | None = None
    """Generator settings when `source` is `synthetic`; unset uses the defaults, seeded with
    the run's seed."""

    cel_rules = (
        CelRule(
            "!has(self.start) || !has(self.end) || self.start < self.end",
            "start must be before end",
            ".end",
        ),
        CelRule(
            "!has(self.synthetic) || self.source == 'synthetic'",
            "synthetic settings are only allowed when source is 'synthetic'",
            ".synthetic",
        ),
        CelRule(
            "self.features.all(f, self.features.exists_one(g, g == f))",
            "features must not repeat",
            ".features",
        ),
    )

    @model_validator(mode="after")
    def _check_extensions(self, info: ValidationInfo) -> DataSource:
        check_extension(info, "data_source", self.source, ".source")
        for i, name in enumerate(self.features):
            check_extension(info, "feature", name, f".features[{i}]")
        return self


# --- checkpoints, tracking -----------------------------------------------------------------


class CheckpointSpec(ApiModel):
    """How often and where the run saves resumable checkpoints."""

    interval: int = Field(default=1, ge=1, le=1_000_000)
    """Save every this many epochs (TrainingRun) or every this many thousand timesteps
    (RLRun)."""
    keep_last: int = Field(default=3, ge=1, le=100)
    """How many recent checkpoints to keep; the best one is always kept."""
    storage: (
        Annotated[
            str, Field(max_length=2048, pattern=r"^(s3://[a-z0-9][-a-z0-9.]*(/.*)?|file://.+)$")
        ]
        | None
    ) = None
    """`s3://bucket/prefix` or `file:///path`; defaults to the operator's object store (in a
    cluster) or `.tradewind/` (with `tradewind run`)."""
    resume_from: Annotated[
        str, Field(max_length=2048, pattern=r"^(latest|none|s3://.+|file://.+)$")
    ] = "latest"
    """`latest` resumes this run's newest checkpoint if there is one, `none` starts fresh, or
    the URI of a checkpoint to start from (e.g. to fine-tune)."""


WandbName = Annotated[str, Field(min_length=1, max_length=128)]
"""A W&B project, entity or group name: at most 128 characters, none of `_WANDB_FORBIDDEN`."""
_WANDB_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")


def _wandb_name_rule(field: str) -> CelRule:
    cel_chars = ", ".join("'" + c.replace("\\", "\\\\") + "'" for c in _WANDB_FORBIDDEN)
    return CelRule(
        f"!has(self.{field}) || ![{cel_chars}].exists(c, self.{field}.contains(c))",
        f"a W&B {field} name has none of {' '.join(_WANDB_FORBIDDEN)}",
        f".{field}",
    )


class WandbSpec(ApiModel):
    """Weights & Biases beside MLflow: node 0 logs the same parameters, metrics, figures and
    tables to a W&B run whose id is the MLflow run's (a restarted attempt resumes it).

    Online, the pods need the API key as `WANDB_API_KEY` (`podTemplate.env` with a
    `valueFrom.secretKeyRef`) and a route to W&B (`WANDB_BASE_URL` for a server of your
    own). If W&B cannot be reached or no key is set, the run warns and goes on with MLflow
    only. Offline, the W&B run's files are logged to the MLflow run under `wandb/` when it
    ends (`mlflow artifacts download ... --artifact-path wandb`, then `wandb sync`); a local
    run's stay in `.tradewind/wandb/<run>/`. Own code gets the settings as WANDB_PROJECT,
    WANDB_ENTITY, WANDB_MODE, WANDB_RUN_GROUP, WANDB_NAME, WANDB_RUN_ID and WANDB_DIR, which
    a bare `wandb.init()` reads."""

    project: WandbName
    """W&B project."""
    entity: WandbName | None = None
    """W&B team or user; defaults to the API key's default entity."""
    mode: Literal["online", "offline"] = "online"
    """`online` streams to W&B; `offline` writes the run's files for `wandb sync`."""
    group: WandbName | None = None
    """W&B run group; defaults to the Sweep of a trial, else the resource name (an RLRun's
    agents and combine step, one W&B run each, share it)."""

    cel_rules = tuple(_wandb_name_rule(f) for f in ("project", "entity", "group"))


class TrackingSpec(ApiModel):
    """Where metrics, parameters, plots and the model go in MLflow (and W&B, TensorBoard)."""

    experiment: ShortStr = "tradewind"
    """MLflow experiment name."""
    run_name: ShortStr | None = None
    """MLflow run name; defaults to the resource name."""
    tags: dict[Annotated[str, Field(max_length=250)], Annotated[str, Field(max_length=5000)]] = (
        Field(default_factory=dict, max_length=32)
    )
    """Extra MLflow run tags. Names starting `tradewind.` or `mlflow.` are Tradewind's and
    MLflow's (the run's identity, checkpoints, nesting under a Sweep) and refused, except
    `mlflow.note.content` (the run's description)."""
    register_model: ShortStr | None = None
    """If set, register the final model in the MLflow model registry under this name."""
    system_metrics: bool = True
    """Log CPU/GPU/memory utilisation per node."""
    tensorboard: bool = False
    """Also write the metrics and figures as TensorBoard event files (own code: write yours
    to $TRADEWIND_TENSORBOARD_DIR), logged to the MLflow run under `tensorboard/` when it
    ends: `mlflow artifacts download --run-id ID --artifact-path tensorboard --dst-path tb`,
    then `tensorboard --logdir tb`. A local run's stay in `.tradewind/tensorboard/<run>/`."""
    wandb: WandbSpec | None = None
    """Also log to Weights & Biases (the guide's TrainingMonitor logs to both)."""

    cel_rules = (
        CelRule(
            "!has(self.tags) || self.tags.all(k, "
            + " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_TAG_PREFIXES)
            + f" || k in {list(ALLOWED_MLFLOW_TAGS)})",
            f"tag names starting {' or '.join(repr(p) for p in RESERVED_TAG_PREFIXES)} are "
            f"written by Tradewind and MLflow (except {', '.join(ALLOWED_MLFLOW_TAGS)}); "
            "use another name",
            ".tags",
        ),
    )


TRAINER_PERMANENT_EXIT_CODES = (64, 65, 66, 67)
"""The built-in trainer's exit codes that no restart can fix (see tradewind.trainer.entrypoint):
invalid config, non-finite loss, data not found, out of memory."""
_DEFAULT_PERMANENT = str(list(TRAINER_PERMANENT_EXIT_CODES))
ExitCode = Annotated[int, Field(ge=1, le=255)]


class FailurePolicy(ApiModel):
    """Which exit codes of a failed pod restart the attempt and which fail the run at once.
    A failure without an exit code (a pod the cluster stopped) is retried; a disruption
    (eviction, preemption, node drain) restarts without counting against maxRestarts."""

    permanent_exit_codes: list[ExitCode] = Field(
        default_factory=lambda: list(TRAINER_PERMANENT_EXIT_CODES), max_length=255
    )
    """Exit codes (1-255) that fail the run without a restart. Defaults to the built-in
    trainer's 64 (InvalidConfig), 65 (NonFiniteLoss), 66 (DataNotFound) and 67
    (OutOfMemory); other codes are reported as PermanentExitCode. Set it (e.g. to `[]`)
    when your own code gives these codes other meanings."""
    retryable_exit_codes: list[ExitCode] = Field(default_factory=list, max_length=255)
    """Exit codes (1-255) that restart the attempt (against maxRestarts). Empty: every code
    not in permanentExitCodes is retried; set: every code outside it is permanent too. A
    container the kubelet OOMKilled (137) is permanent (OutOfMemory) unless 137 is listed
    here."""

    cel_rules = (
        CelRule(
            "!has(self.permanentExitCodes) || "
            "self.permanentExitCodes.all(c, self.permanentExitCodes.exists_one(d, d == c))",
            "permanentExitCodes must not repeat",
            ".permanentExitCodes",
        ),
        CelRule(
            "!has(self.retryableExitCodes) || "
            "self.retryableExitCodes.all(c, self.retryableExitCodes.exists_one(d, d == c))",
            "retryableExitCodes must not repeat",
            ".retryableExitCodes",
        ),
        CelRule(
            "!has(self.retryableExitCodes) || self.retryableExitCodes.all(c, !(c in "
            f"(has(self.permanentExitCodes) ? self.permanentExitCodes : {_DEFAULT_PERMANENT})))",
            "an exit code cannot be both permanent and retryable (permanentExitCodes defaults "
            f"to {_DEFAULT_PERMANENT}: set it to make one of these retryable)",
            ".retryableExitCodes",
        ),
    )


class Lifecycle(ApiModel):
    """Restart, suspend, deadline and clean-up policy shared by runs. None of these fields
    reaches the pods: a change of one is acted on (and observed) at once, where a change of
    any other spec field rolls a new attempt (docs/failures.md)."""

    max_restarts: int = Field(default=3, ge=0, le=100)
    """How many times a failed attempt is torn down and restarted from the latest checkpoint
    before the run is Failed. Disruptions and spec changes do not count."""
    suspend: bool = False
    """Suspend the run: pods are deleted, state is kept; set false to resume."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the run (DeadlineExceeded) this long after its first attempt's Job started (its
    pods were created: time queued in Kueue before that does not count); every later
    attempt, and time suspended, count."""
    scheduling_timeout_seconds: int | None = Field(default=None, ge=1)
    """Fail an attempt (SchedulingTimeout) whose pods are not all running this long after
    its Job started (time queued in Kueue does not count): its pods are deleted, releasing
    what a partly placed gang holds, and it is restarted against maxRestarts. Unset waits
    for ever."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Which exit codes are permanent and which are retried."""
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """What is kept of finished attempts (the Jobs, their finished pods for `kubectl logs`,
    and ConfigMaps); pods still running when their attempt ends are always deleted.
    `Running`: the last failed attempt's and, once the run ends, its last attempt's;
    `None`: every failed attempt's as well; `All`: none (each attempt's are deleted when
    the next starts, and the last one's when the run ends)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the run this long after it finished; unset keeps it."""
    managed_by: Annotated[str, Field(max_length=63)] | None = None
    """The controller that reconciles this run; unset (or `tradewind.dev/operator`) is the
    Tradewind operator. Any other value (e.g. Kueue's `kueue.x-k8s.io/multikueue`) makes
    this operator leave the run alone."""


class RunBase(Lifecycle):
    """What every run has: image, placement, resources, checkpoints, tracking, lifecycle."""

    image: Annotated[str, Field(max_length=1024)] | None = None
    """Trainer container image; defaults to the operator's configured trainer image."""
    device: Literal["cpu", "cuda"] = "cpu"
    """What the trainer computes on: `cuda` trains on GPUs (torch's cuda devices: NVIDIA's,
    and AMD's with a ROCm build of torch) and, without `accelerator`, requests
    `nvidia.com/gpu` = procsPerNode on each node; `cpu` trains on CPU cores."""
    accelerator: Accelerator | None = None
    """The devices each pod gets, e.g. `{resource: amd.com/gpu, perNode: 8}`: any extended
    resource, as many per pod as you say (requested and limited). With device `cpu` the pods
    get them and the built-in trainer still trains on CPU (your own code may use them)."""
    resources: ResourceList = Field(default_factory=ResourceList)
    """CPU and memory per node."""
    pod_template: PodTemplateOverride = Field(default_factory=PodTemplateOverride)
    """A patch over the operator's pod: placement, security contexts, init containers and
    sidecars, networking, environment, volumes (see docs/pod-template.md)."""
    gang_scheduling: GangScheduling | None = None
    """Place each attempt's pods all at once or not at all, with Volcano or scheduler-plugins'
    coscheduling (a PodGroup per attempt); unset leaves the pods to the scheduler one by
    one."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """MLflow tracking."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Global random seed; runs with the same seed and data are reproducible."""
