"""Operator configuration, in one typed place. Each setting comes from a TRADEWIND_* variable
(the Helm chart sets them)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """What the operator needs to know about its cluster."""

    model_config = SettingsConfigDict(env_prefix="TRADEWIND_", extra="ignore")

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch (JSON list in TRADEWIND_NAMESPACES); empty watches all."""
    trainer_image: str = "tradewind-trainer:latest"
    """Image of runs that do not set `spec.image`."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets every run pod pulls its image with (JSON list in TRADEWIND_IMAGE_PULL_SECRETS;
    a Secret of each name in each namespace where runs go), before the run's own."""
    s3_endpoint: str | None = None
    """Object store (MinIO/S3) URL the pods write checkpoints to, e.g. http://minio:9000."""
    s3_credentials_secret: str | None = None
    """Secret (in the run's namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."""
    checkpoint_bucket: str = "tradewind"
    """Bucket for checkpoints of runs that do not set `spec.checkpoint.storage`; each
    namespace's runs default to, and may reach, `s3://<bucket>/<namespace>/`."""
    storage_scope: bool = True
    """Refuse runs (Failed, StorageNotAllowed) whose `s3://` checkpoint storage, resumeFrom or
    data source lies outside their namespace's prefix and the namespace's
    `tradewind.dev/allowed-storage` annotation (see operator/storage_scope.py)."""
    mlflow_tracking_uri: str | None = None
    """MLflow server URL the pods log to and the operator reads progress from."""
    mlflow_credentials_secret: str | None = None
    """Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, if MLflow needs them
    (the run pods' namespace's; the Helm chart also gives the operator the release
    namespace's Secret of this name)."""
    mlflow_tracking_username: str | None = Field(None, validation_alias="MLFLOW_TRACKING_USERNAME")
    mlflow_tracking_password: SecretStr | None = Field(
        None, validation_alias="MLFLOW_TRACKING_PASSWORD"
    )
    mlflow_tracking_token: SecretStr | None = Field(None, validation_alias="MLFLOW_TRACKING_TOKEN")
    """The operator's own MLflow credentials, under MLflow's names (basic auth, or a bearer
    token), for reading progress."""
    optuna_storage: str = "sqlite:////var/lib/tradewind/optuna.db"
    """Optuna RDB storage URL for in-cluster sweeps."""
    status_poll_seconds: float = Field(default=15.0, gt=0)
    """How often running runs' progress is read from MLflow, by one search per namespace and
    experiment (stretched beyond this when many runs are active:
    `periodic_reconciles_per_second`)."""
    periodic_reconciles_per_second: float = Field(default=20.0, gt=0)
    """The periodic work no event asks for, the resyncs (each run's every 60 s) and the
    MLflow progress reads (each active run's every status_poll_seconds; a read costs a
    reconcile only when it found what the status does not hold yet), each stay under about
    this many a second for all runs together. With more runs than that allows, the period stretches
    to runs / this (all runs for the resync, the active ones for progress). At 10,000 runs a
    resync a minute was a third of a core for an operator with nothing to do
    (bench/README.md). Events wake a run at once regardless."""
    reconcile_workers: int = Field(default=32, ge=1, le=512)
    """Threads that run reconciles (each does a few blocking API calls) concurrently."""
    concurrent_starts: int = Field(default=4, ge=1, le=512)
    """Runs that create their first attempt's children (ConfigMap, Service, Job) at once;
    the others wait their turn. Starts then come as fast as the apiserver answers, not all
    at once: the Job controller, scheduler and nodes take each Job's pods together, and a
    thousand runs applied at once are all Running sooner (bench/README.md, issue 17)."""
    api_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """How long one apiserver request may take before it fails (and the reconcile is retried
    with backoff) instead of holding a reconcile thread."""
    normal_events_per_second: float = Field(default=5.0, ge=0)
    """Normal Events (a run created, all its pods running, a trial done...) each namespace
    gets per second once its burst is spent; the rest are not posted (the run's status
    conditions say the same). Warning Events are always posted."""
    normal_events_burst: int = Field(default=50, ge=0)
    """Normal Events a namespace may get at once; 0 posts Warnings only."""
    retry_max_seconds: float = Field(default=300.0, gt=0)
    """The longest wait between retries of a run whose reconcile keeps failing (exponential
    backoff with jitter from 1 s; an apiserver's Retry-After is honoured)."""
    leader_election: bool = True
    """Work only while holding the Lease `lease_name` (operator/leader.py): of several
    replicas, one works and the others wait. False: work at once (one process only)."""
    lease_name: str = "tradewind-operator"
    """The coordination.k8s.io Lease the replicas elect a leader on."""
    lease_namespace: str | None = None
    """Its namespace; default the pod's own (its service account's), else `default`."""
    lease_identity: str | None = None
    """This replica's name in the Lease; default `<hostname>_<pid>` (the pod's name)."""
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    """A standby takes the Lease over when its record has not changed for this long."""
    lease_renew_deadline_seconds: float = Field(default=10.0, gt=0)
    """The leader exits when it has not renewed for this long (less than the duration)."""
    lease_retry_seconds: float = Field(default=2.0, gt=0)
    """How often the leader renews and a standby looks at the Lease."""
