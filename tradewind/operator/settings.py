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
    s3_endpoint: str | None = None
    """Object store (MinIO/S3) URL the pods write checkpoints to, e.g. http://minio:9000."""
    s3_credentials_secret: str | None = None
    """Secret (in the run's namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."""
    checkpoint_bucket: str = "tradewind"
    """Bucket for checkpoints of runs that do not set `spec.checkpoint.storage`."""
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
    """How often running runs' progress is read from MLflow."""
    reconcile_workers: int = Field(default=32, ge=1, le=512)
    """Threads that run reconciles (each does a few blocking API calls) concurrently."""
