"""Spec pieces shared by TrainingRun and RLRun: pods, data, checkpoints, tracking, lifecycle."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from tradewind.api.base import ApiModel, CelRule, DNSLabel, LongStr, Quantity, ShortStr
from tradewind.api.identity import ALLOWED_MLFLOW_TAGS, RESERVED_TAG_PREFIXES

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
)
Feature = Literal[
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
]
Execution = Literal["next_close", "next_open"]
"""Fill price of a decision made at bar t: the close or the open of bar t+1."""

DEFAULT_FEATURES: list[Feature] = ["returns", "log_returns", "rsi", "macd", "bollinger", "atr"]


# --- pods ----------------------------------------------------------------------------------


class ResourceList(ApiModel):
    """Compute resources per node (pod). GPUs are not set here: see `device`."""

    requests: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(
        default_factory=dict, max_length=16
    )
    """Minimum resources per pod, e.g. `{cpu: "4", memory: 16Gi}`."""
    limits: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(
        default_factory=dict, max_length=16
    )
    """Maximum resources per pod, e.g. `{memory: 32Gi}`."""


class Toleration(ApiModel):
    """A Kubernetes toleration, so pods can land on tainted (e.g. GPU) nodes."""

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key to tolerate; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Equal` matches key and value; `Exists` matches the key alone."""
    value: Annotated[str, Field(max_length=253)] | None = None
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


RESERVED_ENV_PREFIXES = ("TRADEWIND_", "PET_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (
    "RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)  # fmt: skip
"""Environment the operator gives a run's pods: a user's value would take its place (the
last of duplicate names wins), moving the rendezvous, the checkpoints or the MLflow run."""


class EnvVar(ApiModel):
    """An environment variable for the training container."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    ]
    """Variable name."""
    value: LongStr | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = None
    """A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."""

    cel_rules = (
        CelRule("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"),
        CelRule(
            f"!(self.name in {list(RESERVED_ENV_NAMES)}) && "
            + " && ".join(f"!self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES),
            "name is set by the operator (torchrun's rendezvous, the object store, MLflow: "
            f"{', '.join(f'{p}*' for p in RESERVED_ENV_PREFIXES)}, "
            f"{', '.join(RESERVED_ENV_NAMES)}); use another name",
            ".name",
        ),
    )


class VolumeMount(ApiModel):
    """Where a volume appears in the training container."""

    name: DNSLabel
    """Name of a volume in `podTemplate.volumes`."""
    mount_path: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^/")]
    """Absolute path in the container."""
    read_only: bool = False
    """Mount read-only."""
    sub_path: Annotated[str, Field(max_length=1024)] | None = None
    """Sub-path of the volume to mount instead of its root."""


class Volume(ApiModel):
    """A Kubernetes volume (any volume source: persistentVolumeClaim, secret, configMap, ...).

    Only `name` is checked here; the rest is passed to the pod as written and checked by the
    apiserver when the Job is created."""

    model_config = ConfigDict(extra="allow")
    name: DNSLabel
    """Volume name, referenced by `volumeMounts`."""


class LocalObjectReference(ApiModel):
    """An object of the run's namespace, by name."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ]
    """Its name."""


class PodTemplateOverride(ApiModel):
    """The narrow part of the pod template a run may change. Everything else (command,
    ports, rendezvous, shared memory) belongs to the operator."""

    labels: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]] = (
        Field(default_factory=dict, max_length=64)
    )
    """Extra pod labels."""
    annotations: dict[Annotated[str, Field(max_length=316)], LongStr] = Field(
        default_factory=dict, max_length=64
    )
    """Extra pod annotations."""
    node_selector: dict[
        Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]
    ] = Field(default_factory=dict, max_length=32)
    """Node labels the pods must match, e.g. `{tradewind.dev/gpu-pool: a100}`."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate."""
    affinity: dict[str, Any] | None = None
    """A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity), passed through."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """PriorityClass of the pods."""
    service_account_name: Annotated[str, Field(max_length=253)] | None = None
    """ServiceAccount the pods run as; defaults to the namespace's `default`."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets (docker-registry) of the run's namespace to pull a private image with, after
    the operator's own (TRADEWIND_IMAGE_PULL_SECRETS, the chart's `imagePullSecrets`)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables for the training container."""
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    """Extra pod volumes."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    """Extra mounts in the training container; each must name a volume above."""

    cel_rules = (
        CelRule(
            "self.volumeMounts.all(m, self.volumes.exists(v, v.name == m.name))",
            "every volumeMounts[].name must name an entry of volumes",
            ".volumeMounts",
        ),
        CelRule(
            "self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
            "volume names must be unique",
            ".volumes",
        ),
    )


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
            pattern=r"^(stocks|indices|eurusd|synthetic|file://.+|s3://[a-z0-9][-a-z0-9.]*/.+)$",
        ),
    ] = "stocks"
    """A bundled dataset (`stocks`, `indices`, `eurusd`, `synthetic`) or a `file://` or
    `s3://bucket/key` URI of a CSV or Parquet file with columns
    symbol,timestamp,open,high,low,close,volume."""
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
        default_factory=lambda: list(DEFAULT_FEATURES), min_length=1, max_length=len(FEATURES)
    )
    """Engineered features computed per symbol: returns, log_returns, sma, ema, rsi, macd,
    bollinger, atr, obv, realized_volatility, volume_zscore, high_low_range."""
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


class TrackingSpec(ApiModel):
    """Where metrics, parameters, plots and the model go in MLflow."""

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


class Lifecycle(ApiModel):
    """Restart, suspend and clean-up policy shared by runs."""

    max_restarts: int = Field(default=3, ge=0, le=100)
    """How many times a failed attempt is torn down and restarted from the latest checkpoint
    before the run is Failed."""
    suspend: bool = False
    """Suspend the run: pods are deleted, state is kept; set false to resume."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the run if it has been active longer than this."""
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
    """`cuda` requests `nvidia.com/gpu` = procsPerNode on each node and trains on GPUs;
    `cpu` trains on CPU cores."""
    resources: ResourceList = Field(default_factory=ResourceList)
    """CPU and memory per node."""
    pod_template: PodTemplateOverride = Field(default_factory=PodTemplateOverride)
    """Scheduling and environment overrides for the pods."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """MLflow tracking."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Global random seed; runs with the same seed and data are reproducible."""
