"""Every kopf registration, and nothing else: each handler body is a line or two.

Children are observed through indexes (owned Jobs and pods by run); one daemon per run
reconciles whenever a child changes (an asyncio.Event in the memo wakes it) and at least
every `status_poll_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf

import tradewind.operator.sweeps  # noqa: F401  (registers the Sweep handlers)
from tradewind.api import GROUP, VERSION
from tradewind.operator import builders, observed
from tradewind.operator.loop import run_daemon, setup

RUNS = ("trainingruns", "rlruns")
CHILD_LABELS = {builders.RUN_LABEL: kopf.PRESENT}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping is named after our API group, in annotations (the status
    # schema would prune kopf's status fields).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Events are posted by the reconcile (one per transition), not by kopf per handler.
    settings.posting.enabled = False
    # Stop daemons promptly when a run is deleted or the operator exits.
    settings.execution.max_workers = 32
    memo.wakeups = defaultdict(asyncio.Event)
    setup(memo)


def _key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str | None, str]:
    return namespace, labels[builders.RUN_LABEL]


@kopf.index("batch", "v1", "jobs", labels=CHILD_LABELS)
def run_jobs(*, namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    return {_key(namespace, labels): observed.job(body)}


@kopf.index("", "v1", "pods", labels=CHILD_LABELS)
def run_pods(*, namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    return {_key(namespace, labels): observed.pod(body)}


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def child_changed(*, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    memo.wakeups[_key(namespace, labels)].set()


@kopf.on.event(GROUP, VERSION, "trainingruns")
@kopf.on.event(GROUP, VERSION, "rlruns")
def run_changed(*, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo.wakeups[(namespace, name)].set()


@kopf.daemon(GROUP, VERSION, "trainingruns", cancellation_timeout=5)
@kopf.daemon(GROUP, VERSION, "rlruns", cancellation_timeout=5)
async def reconcile_run(
    *, body: kopf.Body, memo: Any, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    await run_daemon(body, memo, stopped, kwargs["run_jobs"], kwargs["run_pods"])


logging.getLogger("kubernetes").setLevel(logging.WARNING)
