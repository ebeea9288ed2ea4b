"""Every kopf registration, and nothing else: each handler body is a line or two.

Runs and Sweeps are watched through kopf; the runs' Jobs and pods through the operator's own
watches (`tradewind.operator.children`: by run, slimmed to what the status logic reads). Each
run has a worker (tradewind.operator.loop.RunWorker, an asyncio task, in
the registry `memo.run_workers`) that reconciles whenever the run or a child changes; the
handlers only hand it the run's body or wake it. Handlers are async: they run on the event
loop, not in kopf's thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

import tradewind.operator.sweeps  # noqa: F401  (registers the Sweep handlers)
from tradewind.api import GROUP, VERSION
from tradewind.operator.loop import RunWorker, setup, start_watches


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping is named after our API group, in annotations (the status
    # schema would prune kopf's status fields). No handler needs a finalizer or progress
    # storage (no daemons, no on.create/update): kopf writes nothing to a run, and removes
    # the finalizer of older operator versions from runs that still carry it.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = (
        UnreadDiffBase(prefix=GROUP)
        if not _changing_handlers()
        else kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    )
    # Events are posted by the reconcile (one per transition), not by kopf per handler.
    settings.posting.enabled = False
    # kopf keeps a task per object for this long after its last watch event, holding that
    # event's whole body (5 s by default): at a thousand runs starting, that is thousands of
    # pods' and Jobs' bodies. Workers that exit sooner keep the RSS down; one costs little to
    # start again.
    settings.queueing.idle_timeout = 0.5
    setup(memo)
    start_watches(memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.children.stop()
    await asyncio.gather(memo.run_workers.stop_all(), memo.sweep_workers.stop_all())


class UnreadDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds each watched object's "essence" (a deep copy of its body) on every watch
    event, to diff it for on.create/update/field handlers. None are registered here, so
    nothing reads that diff: an empty essence spares a deep copy of every Job, pod and run
    body per event (0.3-0.5 ms each, ~25 events per run)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None


def _changing_handlers() -> bool:
    """Whether any on.create/update/delete/field/resume handler is registered (then kopf's
    diff base is needed); True where kopf's registry does not say."""
    changing = getattr(kopf.get_default_registry(), "_changing", None)
    return changing is None or bool(getattr(changing, "_handlers", True))


@kopf.on.event(GROUP, VERSION, "trainingruns")
@kopf.on.event(GROUP, VERSION, "rlruns")
async def run_changed(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    memo.run_workers.on_event(body, kwargs["type"], lambda run: RunWorker(run, memo))


logging.getLogger("kubernetes").setLevel(logging.WARNING)
