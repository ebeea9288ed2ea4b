"""One worker (an asyncio task) per watched object, and the registry that starts, feeds, wakes
and stops them from kopf's event handlers: one registry for runs, one for Sweeps, both in
kopf's memo (`memo.run_workers`, `memo.sweep_workers`); `main`'s cleanup stops them.

No kopf daemons: kopf puts a finalizer on every object a daemon watches (one more write of
each, and deleting one, or its namespace, waits for the operator), while ownerReferences
already delete the children with their owner. What a worker does is its subclass's:
`loop.RunWorker`, `sweeps.SweepWorker`.

A watch that expired (410 Gone) is listed again by kopf, which then sends each listed object
with event type None and sends no DELETED for one deleted meanwhile. So once a listing of a
kind has gone quiet, each worker of that kind it did not list asks whether its object is
still there (`Worker.exists`) and stops if not.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tradewind.operator.retry import describe

log = logging.getLogger(__name__)

Key = tuple[str | None, str]
"""An object's (namespace, name)."""
Ref = tuple[str, str | None, str]
"""An object's (kind, namespace, name): a TrainingRun and an RLRun may share a name."""
LISTING_QUIET_SECONDS = 5.0
"""A listing of a kind is over once no listed object has come for this long."""


def stretched(period: float, runs: int, per_second: float) -> float:
    """`period`, or longer: long enough that `runs` runs, each waking once per period, wake
    at most `per_second` times a second together (`periodic_reconciles_per_second`)."""
    return max(period, runs / per_second)


class Worker(abc.ABC):
    """One object's loop, as an asyncio task: the latest slimmed body its watch delivered, a
    wake-up event and a stop flag. `run` loops until `stopped`: it clears `wakeup` before each
    pass and waits on it (`sleep`) after, so the events of one pass fold into one wake-up."""

    task: asyncio.Task[None]

    def __init__(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.key: Key = (meta.get("namespace"), meta["name"])
        self.ref: Ref = (body.get("kind", ""), *self.key)
        self.uid: str | None = meta.get("uid")
        self.last_event = -float("inf")
        """When the watch last sent this object (the event loop's clock)."""
        self.body = body
        self.wakeup = asyncio.Event()
        self.stopped = False

    @abc.abstractmethod
    async def run(self) -> None:
        """The loop; returns once `stopped`."""

    def update(self, body: dict[str, Any]) -> None:
        self.body = body
        self.wakeup.set()

    def stop(self) -> None:
        """Ask the loop to end: at once if it waits, after its pass if one is under way."""
        self.stopped = True
        self.wakeup.set()

    async def exists(self) -> bool:
        """Whether the object is still there (asked after a listing that left it out); True
        where a subclass cannot tell."""
        return True

    async def sleep(self, timeout: float) -> None:
        """Until woken (or stopped), or for `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=max(timeout, 0.0))


async def still_there(kube: Any, ref: Ref, uid: str | None) -> bool:
    """Whether the object `ref` is in the apiserver with this uid (`Kube.exists`); True
    where the apiserver cannot tell (the worker is kept)."""
    kind, ns, name = ref
    if uid is None:
        return True
    try:
        return bool(await asyncio.to_thread(kube.exists, kind, ns or "default", name, uid))
    except Exception as exc:
        log.warning("could not look up %s %s/%s: %s", kind, ns, name, describe(exc))
        return True


class Workers:
    """The worker of every live object of some kinds, by (kind, namespace, name). Its tasks
    are named `f"{name} {namespace}/{object name}"`."""

    listing_quiet = LISTING_QUIET_SECONDS

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_key: dict[Ref, Worker] = {}
        self._listing: dict[str, tuple[float, float]] = {}  # kind: (first, latest) event
        self._checks: set[asyncio.Task[None]] = set()

    def on_event(
        self,
        body: Mapping[str, Any],
        event_type: str | None,
        start: Callable[[dict[str, Any]], Worker],
    ) -> None:
        """Hand the object's body, slimmed, to its worker (which wakes it), or to `start` on
        its first event; stop the worker once the object is gone: DELETED, or its deletion
        has started (a foreground deletion keeps it until its children are gone; they go by
        ownerReference without the worker). The worker of an earlier object of the same name
        (another uid) is stopped, and a new one started."""
        meta = body["metadata"]
        key: Ref = (body.get("kind", ""), meta.get("namespace"), meta["name"])
        loop = asyncio.get_running_loop()
        if event_type is None:  # kopf is listing this kind
            self._listed(key[0], loop.time())
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        worker = self.by_key.get(key)
        if worker is not None and (gone or worker.uid != meta.get("uid")):
            worker.stop()
            del self.by_key[key]
            worker = None
        if gone:
            return
        if worker is not None:
            worker.last_event = loop.time()
            worker.update(slim_body(body))
            return
        worker = self.by_key[key] = start(slim_body(body))
        worker.last_event = loop.time()
        worker.task = loop.create_task(worker.run(), name=f"{self.name} {key[1]}/{key[2]}")

    def wake(self, key: Ref) -> None:
        worker = self.by_key.get(key)
        if worker is not None:
            worker.wakeup.set()

    def discard(self, worker: Worker) -> None:
        """Forget a worker that stopped itself (its object is gone)."""
        if self.by_key.get(worker.ref) is worker:
            del self.by_key[worker.ref]

    def _listed(self, kind: str, now: float) -> None:
        first = self._listing.get(kind, (now, now))[0]
        if kind not in self._listing:
            task = asyncio.get_running_loop().create_task(
                self._after_listing(kind), name=f"{self.name} listing of {kind}"
            )
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        self._listing[kind] = (first, now)

    async def _after_listing(self, kind: str) -> None:
        """Once the listing of `kind` is quiet: the workers it did not list whose object is
        gone are stopped (kopf sends no DELETED for what was deleted while its watch was
        down)."""
        loop = asyncio.get_running_loop()
        while (rest := self._listing[kind][1] + self.listing_quiet - loop.time()) > 0:
            await asyncio.sleep(rest)
        started, _ = self._listing.pop(kind)
        unlisted = [w for w in self.by_key.values() if w.ref[0] == kind and w.last_event < started]
        for worker in unlisted:
            if not await worker.exists():
                log.info("%s %s/%s is gone (not listed again): worker stopped", *worker.ref)
                self.discard(worker)
                worker.stop()

    async def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every worker; those still in a pass after `timeout` seconds are cancelled."""
        for check in list(self._checks):
            check.cancel()
        workers = list(self.by_key.values())
        self.by_key.clear()
        for worker in workers:
            worker.stop()
        if workers:
            _, pending = await asyncio.wait([w.task for w in workers], timeout=timeout)
            for task in pending:
                task.cancel()


def slim_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a reconcile reads of a run or Sweep: managedFields and the like are dropped."""
    meta = body["metadata"]
    out = {k: body[k] for k in ("apiVersion", "kind", "spec", "status") if k in body}
    out["metadata"] = {k: meta[k] for k in KEPT_METADATA if k in meta}
    return out


KEPT_METADATA = (
    "name", "namespace", "uid", "generation", "resourceVersion", "labels", "annotations",
    "creationTimestamp", "deletionTimestamp",
)  # fmt: skip
