"""The kopf registrations of Sweeps: each Sweep has a worker (an asyncio task) that runs its
study.

The worker reconciles (`sweep_reconcile`) whenever the Sweep or one of its child runs changes
(the handlers below only wake it), and at least every `status_poll_seconds`, the pace at which
the children's intermediate metrics are read from MLflow for the pruner. No kopf daemon: a
daemon makes kopf put a finalizer on every Sweep, so deleting one (or its namespace) would
wait for the operator; ownerReferences already delete the children with their Sweep. The
study is dropped from the storage when the Sweep's deletion is seen. Imported by `main` (one
line); uses the clients and settings that main's start-up puts in the memo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from tradewind.api import GROUP, VERSION
from tradewind.api.status import SweepStatus
from tradewind.operator.loop import slim_body
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.sweep_reconcile import TrialMetrics, reconcile_sweep, storage
from tradewind.operator.sweep_status import SWEEP_LABEL, TERMINAL, study_name

log = logging.getLogger(__name__)
CHILDREN = {SWEEP_LABEL: kopf.PRESENT}
Key = tuple[str | None, str]
FINISHED_POLL_SECONDS = 60.0
"""A finished Sweep is looked at this often (e.g. maxTrials raised), besides its events."""


@dataclass
class SweepWorker:
    """One Sweep's reconcile loop and the latest body its watch delivered."""

    body: dict[str, Any]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid"))

    async def run(self, memo: Any) -> None:
        settings: OperatorSettings = memo.settings
        metrics = TrialMetrics(settings.mlflow_tracking_uri)
        last: SweepStatus | None = None  # what we wrote: the watched body may lag behind it
        meta = self.body["metadata"]
        while True:
            self.wakeup.clear()
            try:
                last = await asyncio.to_thread(
                    reconcile_sweep, self.body, memo.kube, settings, metrics, last
                )
            except Exception:  # retried on the next wake-up
                log.exception("reconcile of sweep %s/%s failed", meta["namespace"], meta["name"])
            finished = last is not None and last.phase in TERMINAL
            timeout = FINISHED_POLL_SECONDS if finished else settings.status_poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=timeout)


_WORKERS: dict[Key, SweepWorker] = {}


@kopf.on.event(GROUP, VERSION, "sweeps")
async def sweep_changed(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    meta = body["metadata"]
    key: Key = (meta.get("namespace"), meta["name"])
    worker = _WORKERS.get(key)
    if kwargs["type"] == "DELETED" or (worker is not None and worker.uid != meta.get("uid")):
        _stop(key)
        worker = None
    # The event's own object, not kopf's live body: plain data the worker's thread can keep.
    snapshot = slim_body(kwargs["event"]["object"])
    if kwargs["type"] == "DELETED":
        await asyncio.to_thread(_drop_study, memo.settings, snapshot)
        return
    if worker is None:
        worker = _WORKERS[key] = SweepWorker(snapshot)
        worker.task = asyncio.create_task(worker.run(memo), name=f"sweep {key[0]}/{key[1]}")
    else:
        worker.body = snapshot
    worker.wakeup.set()


@kopf.on.event(GROUP, VERSION, "trainingruns", labels=CHILDREN)
@kopf.on.event(GROUP, VERSION, "rlruns", labels=CHILDREN)
async def sweep_child_changed(
    *, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    worker = _WORKERS.get((namespace, labels[SWEEP_LABEL]))
    if worker is not None:
        worker.wakeup.set()


@kopf.on.cleanup()
async def stop_sweep_workers(**_: Any) -> None:
    for key in list(_WORKERS):
        _stop(key)


def _stop(key: Key) -> None:
    worker = _WORKERS.pop(key, None)
    if worker is not None and worker.task is not None:
        worker.task.cancel()


def _drop_study(settings: OperatorSettings, body: dict[str, Any]) -> None:
    """The Sweep is gone (its children go with it, by owner reference): drop its study."""
    import optuna

    meta = body["metadata"]
    name = study_name(meta["namespace"], meta["name"], meta["uid"])
    with contextlib.suppress(KeyError):  # never created (e.g. an invalid Sweep)
        optuna.delete_study(study_name=name, storage=storage(settings.optuna_storage))
    log.info("sweep %s/%s deleted: study %s dropped", meta["namespace"], meta["name"], name)
