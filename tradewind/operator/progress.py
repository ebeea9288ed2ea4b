"""Live progress of a running run, read from MLflow's REST API (no MLflow client in the
operator image): latest metrics, progress, checkpoint URIs and the run's link."""

from __future__ import annotations

import base64
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Self

from tradewind.api.resources import RLRun, TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator.kube import Kube
from tradewind.operator.settings import OperatorSettings

log = logging.getLogger(__name__)
HEADLINE = ("val_loss", "eval_mean_reward", "train_loss")
TAG_LATEST = "tradewind.checkpoint.latest"  # set by tradewind.trainer.tracking
TAG_BEST = "tradewind.checkpoint.best"


class ProgressReader:
    """Finds the MLflow run of a resource by its tags and folds it into the status. With
    credentials (as MLflow's own client takes them: a username and password, or a token)
    every request carries them."""

    def __init__(
        self,
        tracking_uri: str | None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self.uri = tracking_uri.rstrip("/") if tracking_uri else None
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif username and password:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        self.refused = False  # MLflow said 401/403 (warned once)

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> Self:
        password, token = settings.mlflow_tracking_password, settings.mlflow_tracking_token
        return cls(
            settings.mlflow_tracking_uri,
            settings.mlflow_tracking_username,
            password.get_secret_value() if password else None,
            token.get_secret_value() if token else None,
        )

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.uri is not None
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403) and not self.refused:
                self.refused = True
                log.warning(
                    "MLflow at %s refused the operator (HTTP %s): runs' progress and metrics "
                    "stay out of their status until the operator has MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) it accepts",
                    self.uri,
                    exc.code,
                )
            raise

    def find_runs(
        self, experiment: str, name: str, namespace: str, newest_first: bool = True, most: int = 1
    ) -> list[dict[str, Any]]:
        """The MLflow runs of a resource, found by its tags (none when MLflow has none or
        cannot be reached)."""
        if self.uri is None:
            return []
        try:
            query = urllib.parse.urlencode({"experiment_name": experiment})
            exp = self._call(f"experiments/get-by-name?{query}")["experiment"]
            found = self._call(
                "runs/search",
                {
                    "experiment_ids": [exp["experiment_id"]],
                    "filter": f"tags.\"tradewind.name\" = '{name}' and "
                    f"tags.\"tradewind.namespace\" = '{namespace}'",
                    "order_by": [f"attributes.start_time {'DESC' if newest_first else 'ASC'}"],
                    "max_results": most,
                },
            )
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log.debug("no MLflow runs for %s/%s: %s", namespace, name, exc)
            return []
        return [dict(run) for run in found.get("runs") or []]

    def find_run(self, experiment: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The resource's newest MLflow run."""
        runs = self.find_runs(experiment, name, namespace)
        return runs[0] if runs else None

    def update(
        self, body: dict[str, Any], run: TrainingRun | RLRun, status: RunStatus, kube: Kube
    ) -> None:
        """Write the latest MLflow metrics, progress and checkpoints into the status (`run`:
        the model parsed from `body`)."""
        meta = body["metadata"]
        found = self.find_run(run.spec.tracking.experiment, meta["name"], meta["namespace"])
        if found is None:
            return
        epochs = run.spec.training.epochs if isinstance(run, TrainingRun) else None
        new = fold_progress(status, found, self.uri or "", epochs)
        if new != status:
            kube.patch_status(body, new)


def headline(metrics: dict[str, float]) -> str | None:
    """What `kubectl get` shows: the test backtest's Sharpe ratio with its 95% interval and
    PSR once the run has one, else the first of HEADLINE it has."""
    sharpe = [metrics.get(f"backtest_{k}") for k in ("sharpe", "sharpe_ci_low", "sharpe_ci_high")]
    psr = metrics.get("backtest_psr")
    if None not in sharpe and psr is not None:
        value, low, high = sharpe
        return f"sharpe={value:.2f} [{low:.2f}, {high:.2f}] psr={psr:.2f}"
    for key in HEADLINE:
        if key in metrics:
            return f"{key}={metrics[key]:.4g}"
    return None


def fold_progress(
    status: RunStatus, mlflow_run: dict[str, Any], uri: str, epochs: int | None
) -> RunStatus:
    """The status with an MLflow run's latest metrics, progress, checkpoints and link;
    `epochs`: the run's total, if it counts epochs."""
    new = status.model_copy(deep=True)
    data, info = mlflow_run.get("data", {}), mlflow_run["info"]
    # NaN and infinities have no JSON form (the apiserver refuses them) and the API refuses
    # them: a metric that is not finite is left out of the status
    metrics = {
        m["key"]: value
        for m in data.get("metrics", [])
        if math.isfinite(value := float(m["value"]))
    }
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    new.metrics = dict(sorted(metrics.items())[:128])
    if "epoch" in metrics and epochs:
        new.progress.epoch, new.progress.total_epochs = int(metrics["epoch"]), int(epochs)
        new.progress.percent = min(100, int(100 * metrics["epoch"] / epochs))
    elif "progress" in metrics:
        new.progress.percent = min(100, int(metrics["progress"]))
    new.headline_metric = headline(metrics) or new.headline_metric
    new.checkpoint.latest = tags.get(TAG_LATEST, new.checkpoint.latest)
    new.checkpoint.best = tags.get(TAG_BEST, new.checkpoint.best)
    new.mlflow.run_id = info["run_id"]
    new.mlflow.url = f"{uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    return new
