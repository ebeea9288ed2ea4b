"""The per-run daemon loop and the operator's start-up (`tradewind operator`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any

import kopf
from kubernetes import client, config

from tradewind.operator import metrics
from tradewind.operator.kube import Kube
from tradewind.operator.progress import ProgressReader
from tradewind.operator.reconcile import reconcile
from tradewind.operator.settings import OperatorSettings

log = logging.getLogger(__name__)
ACTIVE = ("Pending", "Running", "Restarting")


def setup(memo: kopf.Memo) -> None:
    """Clients and settings shared by every daemon."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    memo.settings = settings = OperatorSettings()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = settings.reconcile_workers * 2
    memo.kube = Kube(client.ApiClient(configuration))
    # Reconciles run in threads (asyncio.to_thread): enough of them that a thousand runs do
    # not queue behind the default pool of min(32, cores + 4).
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=settings.reconcile_workers)
    )
    memo.progress = ProgressReader(settings.mlflow_tracking_uri)


async def run_daemon(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    jobs_index: kopf.Index[Any, Any],
    pods_index: kopf.Index[Any, Any],
) -> None:
    """Reconcile on every child change (or every status_poll_seconds) until the run is gone;
    while it runs, fold MLflow progress into its status."""
    key = (body["metadata"].get("namespace"), body["metadata"]["name"])
    wakeup: asyncio.Event = memo.wakeups[key]
    settings: OperatorSettings = memo.settings
    last_progress = 0.0
    written: dict[str, Any] = {}  # our last status write and the resourceVersion it produced
    counted: str | None = None  # the phase this run is counted under in the gauge
    while not stopped:
        wakeup.clear()
        snapshot = {
            k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body
        }
        if written and _older(snapshot["metadata"].get("resourceVersion"), written["version"]):
            # The watch has not delivered our own status write yet: decide from what we wrote,
            # not from the stale copy (no double restarts, no duplicate Events).
            snapshot["status"] = written["status"]
        jobs, pods = list(jobs_index.get(key, [])), list(pods_index.get(key, []))
        phase = None
        kind = snapshot["kind"]
        try:
            with metrics.RECONCILE_SECONDS.labels(kind).time():
                decision = await asyncio.to_thread(
                    reconcile, snapshot, jobs, pods, memo.kube, settings
                )
            counted = _count(kind, counted, decision.status.phase)
            if decision.status.restarts > int((snapshot.get("status") or {}).get("restarts") or 0):
                metrics.RESTARTS.labels(kind).inc()
            if decision.written_version is not None:
                status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
                written.update(version=decision.written_version, status=status)
            phase = decision.status.phase
            if phase in ACTIVE and time.monotonic() - last_progress >= settings.status_poll_seconds:
                last_progress = time.monotonic()
                await asyncio.to_thread(memo.progress.update, snapshot, decision.status, memo.kube)
        except Exception:  # a failed reconcile is retried on the next wake-up
            metrics.RECONCILE_ERRORS.labels(kind).inc()
            log.exception("reconcile of %s/%s failed", *key)
        timeout = settings.status_poll_seconds if phase is None or phase in ACTIVE else 60.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=timeout)
    memo.wakeups.pop(key, None)
    if counted:
        metrics.RUNS_BY_PHASE.labels(body["kind"], counted).dec()


def _count(kind: str, counted: str | None, phase: str) -> str:
    """Move this run in the runs-by-phase gauge from where it was counted to `phase`."""
    if counted != phase:
        if counted:
            metrics.RUNS_BY_PHASE.labels(kind, counted).dec()
        metrics.RUNS_BY_PHASE.labels(kind, phase).inc()
    return phase


def _older(version: str | None, than: str) -> bool:
    """Whether the cached body predates our write. resourceVersions are etcd revisions in
    practice; where one is not a number, trust the body."""
    try:
        return version is not None and int(version) < int(than)
    except ValueError:
        return False


def run_operator(
    namespaces: list[str],
    liveness: str | None = None,
    metrics_port: int | None = None,
    json_logs: bool = False,
    verbose: bool = False,
) -> None:
    """Run the operator in this process until interrupted."""
    import tradewind.operator.main  # noqa: F401  (registers the handlers)

    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL
    )
    if not verbose:  # one line per watch event and handler is too much at a thousand runs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if metrics_port is not None:
        metrics.serve(metrics_port)
    log.info("tradewind operator starting; namespaces: %s", ", ".join(namespaces) or "all")
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=liveness,
    )
