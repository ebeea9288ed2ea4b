"""One worker (an asyncio task) per watched object, and the registry that starts, feeds, wakes
and stops them from kopf's event handlers: one registry for runs, one for Sweeps, both in
kopf's memo (`memo.run_workers`, `memo.sweep_workers`); `main`'s cleanup stops them.

No kopf daemons: kopf puts a finalizer on every object a daemon watches (one more write of
each, and deleting one, or its namespace, waits for the operator), while ownerReferences
already delete the children with their owner. What a worker does is its subclass's:
`loop.RunWorker`, `sweeps.SweepWorker`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

Key = tuple[str | None, str]
"""An object's (namespace, name)."""


class Worker(abc.ABC):
    """One object's loop, as an asyncio task: the latest slimmed body its watch delivered, a
    wake-up event and a stop flag. `run` loops until `stopped`: it clears `wakeup` before each
    pass and waits on it (`sleep`) after, so the events of one pass fold into one wake-up."""

    task: asyncio.Task[None]

    def __init__(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.key: Key = (meta.get("namespace"), meta["name"])
        self.uid: str | None = meta.get("uid")
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

    async def sleep(self, timeout: float) -> None:
        """Until woken (or stopped), or for `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=max(timeout, 0.0))


class Workers:
    """The worker of every live object of one kind, by (namespace, name). Its tasks are named
    `f"{name} {namespace}/{object name}"`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_key: dict[Key, Worker] = {}

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
        key: Key = (meta.get("namespace"), meta["name"])
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        worker = self.by_key.get(key)
        if worker is not None and (gone or worker.uid != meta.get("uid")):
            worker.stop()
            del self.by_key[key]
            worker = None
        if gone:
            return
        if worker is not None:
            worker.update(slim_body(body))
            return
        worker = self.by_key[key] = start(slim_body(body))
        worker.task = asyncio.get_running_loop().create_task(
            worker.run(), name=f"{self.name} {key[0]}/{key[1]}"
        )

    def wake(self, key: Key) -> None:
        worker = self.by_key.get(key)
        if worker is not None:
            worker.wakeup.set()

    async def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every worker; those still in a pass after `timeout` seconds are cancelled."""
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
