"""The kopf registrations of Sweeps: each Sweep has a worker (`SweepWorker`, an asyncio task in
the registry `memo.sweep_workers`) that runs its study.

The worker reconciles (`sweep_reconcile`) whenever the Sweep or one of its child runs changes
(the handlers below only hand it the Sweep's body or wake it), and at least every
`status_poll_seconds`, the pace at which the children's intermediate metrics are read from
MLflow for the pruner. No kopf daemon (see `workers`): ownerReferences delete the children
with their Sweep. The study is dropped from the storage when the Sweep's deletion is seen.
Imported by `main` (one line); uses the clients, settings and registry that main's start-up
puts in the memo, and main's cleanup stops the workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from tradewind.api import GROUP, VERSION
from tradewind.api.identity import SWEEP_LABEL
from tradewind.api.status import SweepStatus
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.sweep_reconcile import (
    SweepCache,
    TrialMetrics,
    reconcile_sweep,
    storage,
)
from tradewind.operator.sweep_status import TERMINAL, study_name
from tradewind.operator.workers import Worker, still_there

log = logging.getLogger(__name__)
CHILDREN = {SWEEP_LABEL: kopf.PRESENT}
FINISHED_POLL_SECONDS = 60.0
"""A finished Sweep is looked at this often (e.g. maxTrials raised), besides its events."""
SWEEP_THREADS = 4
"""Sweep reconciles at once, on threads of their own: their MLflow and Optuna storage calls
never take the threads that runs reconcile on."""
_POOL = concurrent.futures.ThreadPoolExecutor(SWEEP_THREADS, "sweep")


class SweepWorker(Worker):
    """One Sweep's reconcile loop; `body` is the Sweep slimmed (`workers.slim_body`)."""

    def __init__(self, body: dict[str, Any], memo: Any) -> None:
        super().__init__(body)
        self.memo = memo

    async def exists(self) -> bool:
        """Whether the Sweep is still there (asked after a relist of Sweeps left it out)."""
        return await still_there(self.memo.kube, self.ref, self.uid)

    async def run(self) -> None:
        settings: OperatorSettings = self.memo.settings
        metrics = TrialMetrics.from_settings(settings, self.memo.progress.breaker)
        cache = SweepCache()
        loop = asyncio.get_running_loop()
        last: SweepStatus | None = None  # what we wrote: the watched body may lag behind it
        while not self.stopped:
            self.wakeup.clear()
            try:
                one = functools.partial(
                    reconcile_sweep, self.body, self.memo.kube, settings, metrics, last, cache=cache
                )
                last = await loop.run_in_executor(_POOL, one)
            except Exception:  # retried on the next wake-up
                log.exception("reconcile of sweep %s/%s failed", *self.key)
            finished = last is not None and last.phase in TERMINAL
            await self.sleep(FINISHED_POLL_SECONDS if finished else settings.status_poll_seconds)


@kopf.on.event(GROUP, VERSION, "sweeps")
async def sweep_changed(*, memo: Any, **kwargs: Any) -> None:
    # The event's own object, not kopf's live body: plain data the worker's thread can keep.
    sweep = kwargs["event"]["object"]
    memo.sweep_workers.on_event(sweep, kwargs["type"], lambda body: SweepWorker(body, memo))
    if kwargs["type"] == "DELETED":
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_POOL, _drop_study, memo.settings, sweep["metadata"])


@kopf.on.event(GROUP, VERSION, "trainingruns", labels=CHILDREN)
@kopf.on.event(GROUP, VERSION, "rlruns", labels=CHILDREN)
async def sweep_child_changed(
    *, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    memo.sweep_workers.wake(("Sweep", namespace, labels[SWEEP_LABEL]))


def _drop_study(settings: OperatorSettings, meta: Mapping[str, Any]) -> None:
    """The Sweep is gone (its children go with it, by owner reference): drop its study."""
    import optuna

    name = study_name(meta["namespace"], meta["name"], meta["uid"])
    with contextlib.suppress(KeyError):  # never created (e.g. an invalid Sweep)
        optuna.delete_study(study_name=name, storage=storage(settings.optuna_storage))
    log.info("sweep %s/%s deleted: study %s dropped", meta["namespace"], meta["name"], name)
