"""The per-run daemon loop and the operator's start-up (`tradewind operator`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf
from kubernetes import client, config

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
    api_client = client.ApiClient()
    api_client.configuration.connection_pool_maxsize = 64
    memo.kube = Kube(api_client)
    memo.settings = OperatorSettings()
    memo.progress = ProgressReader(memo.settings.mlflow_tracking_uri)


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
        try:
            decision = await asyncio.to_thread(reconcile, snapshot, jobs, pods, memo.kube, settings)
            if decision.written_version is not None:
                status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
                written.update(version=decision.written_version, status=status)
            phase = decision.status.phase
            if phase in ACTIVE and time.monotonic() - last_progress >= settings.status_poll_seconds:
                last_progress = time.monotonic()
                await asyncio.to_thread(memo.progress.update, snapshot, decision.status, memo.kube)
        except Exception:  # a failed reconcile is retried on the next wake-up
            log.exception("reconcile of %s/%s failed", *key)
        timeout = settings.status_poll_seconds if phase is None or phase in ACTIVE else 60.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=timeout)
    memo.wakeups.pop(key, None)


def _older(version: str | None, than: str) -> bool:
    """Whether the cached body predates our write. resourceVersions are etcd revisions in
    practice; where one is not a number, trust the body."""
    try:
        return version is not None and int(version) < int(than)
    except ValueError:
        return False


def run_operator(namespaces: list[str], liveness: str | None = None) -> None:
    """Run the operator in this process until interrupted."""
    import tradewind.operator.main  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=False)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=liveness,
    )
