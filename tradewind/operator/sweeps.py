"""The kopf registrations of Sweeps: one daemon per Sweep runs its study.

The daemon reconciles (`sweep_reconcile`) whenever the Sweep or one of its child runs
changes (an asyncio.Event wakes it), and at least every `status_poll_seconds`, the pace at
which the children's intermediate metrics are read from MLflow for the pruner. Imported by
`main` (one line); uses the clients and settings that main's start-up puts in the memo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf

from tradewind.api import GROUP, VERSION
from tradewind.api.status import SweepStatus
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.sweep_reconcile import TrialMetrics, reconcile_sweep, storage
from tradewind.operator.sweep_status import SWEEP_LABEL, TERMINAL, study_name

log = logging.getLogger(__name__)
CHILDREN = {SWEEP_LABEL: kopf.PRESENT}
_WAKEUPS: defaultdict[tuple[str | None, str], asyncio.Event] = defaultdict(asyncio.Event)


@kopf.on.event(GROUP, VERSION, "trainingruns", labels=CHILDREN)
@kopf.on.event(GROUP, VERSION, "rlruns", labels=CHILDREN)
def sweep_child_changed(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _WAKEUPS[(namespace, labels[SWEEP_LABEL])].set()


@kopf.on.event(GROUP, VERSION, "sweeps")
def sweep_changed(*, namespace: str | None, name: str, **_: Any) -> None:
    _WAKEUPS[(namespace, name)].set()


@kopf.daemon(GROUP, VERSION, "sweeps", cancellation_timeout=5)
async def run_sweep(*, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Reconcile the Sweep until it is deleted (a finished Sweep is looked at rarely)."""
    key = (body["metadata"].get("namespace"), body["metadata"]["name"])
    wakeup = _WAKEUPS[key]
    settings: OperatorSettings = memo.settings
    metrics = TrialMetrics(settings.mlflow_tracking_uri)
    last: SweepStatus | None = None  # what we wrote: the watched body may lag behind it
    while not stopped:
        wakeup.clear()
        snapshot = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status")
                    if k in body}  # fmt: skip
        try:
            last = await asyncio.to_thread(
                reconcile_sweep, snapshot, memo.kube, settings, metrics, last
            )
        except Exception:  # retried on the next wake-up
            log.exception("reconcile of sweep %s/%s failed", *key)
        poll = settings.status_poll_seconds
        timeout = 60.0 if last is not None and last.phase in TERMINAL else poll
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=timeout)
    _WAKEUPS.pop(key, None)


@kopf.on.delete(GROUP, VERSION, "sweeps", optional=True)
async def delete_study(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    """The Sweep is gone (its children go with it, by owner reference): drop its study."""
    meta = body["metadata"]
    name = study_name(meta["namespace"], meta["name"], meta["uid"])
    settings: OperatorSettings = memo.settings

    def drop() -> None:
        import optuna

        with contextlib.suppress(KeyError):  # never created (e.g. an invalid Sweep)
            optuna.delete_study(study_name=name, storage=storage(settings.optuna_storage))

    await asyncio.to_thread(drop)
