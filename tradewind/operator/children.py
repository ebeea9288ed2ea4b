"""The operator's own watches of its runs' Jobs and pods, and what they keep of each: the slim
copy the status logic reads (`observed.OBSERVE`), by the run it belongs to.

Runs and Sweeps are kopf's; their children are not. A thousand runs starting bring ~15 Job and
pod events each, and kopf handles every one as it would a run: a Body, a Patch and three
loggers, a worker task per object, the index's and the handler's invocation with their
kwargs, the diff base and a patch application, all on the event loop that also serves the
runs. Here each watch is a thread that reads the stream, decodes a line and slims the object,
and the event loop only swaps the slim copy into the index and wakes the run's worker when
what a reconcile reads changed (bench/README.md, issue 17).

Each watch LISTs (in pages), then WATCHes from the list's resourceVersion with bookmarks; an
expired resourceVersion (410) or a broken stream is listed again, and that listing replaces
what the index held of its scope (a child deleted meanwhile is dropped). Workers reconcile
only once every watch has listed (`Children.listed`), as kopf held handlers until its indexes
were full: before that, a run's Job would look missing and be created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from tradewind.operator import builders, observed
from tradewind.operator.kube import Kube
from tradewind.operator.retry import Backoff, describe

log = logging.getLogger(__name__)

RunKey = tuple[str, str | None, str]
"""A run as (kind, namespace, name), its worker's key: a TrainingRun and an RLRun may share
a name. A run created again under a name finds its predecessor's children here too: the
reconcile keeps only those of its own uid."""
Child = tuple[str | None, str]
"""A child as (namespace, name)."""

PATHS = {"jobs": "/apis/batch/v1", "pods": "/api/v1"}
SELECTOR = builders.RUN_LABEL
"""Children carry their run's name in this label; nothing else of the namespace is watched."""
PAGE = 500
WATCH_SECONDS = 300
"""The apiserver ends each watch after this long (it is opened again from the last
resourceVersion seen): a stream that died silently is noticed within this, plus READ_SLACK."""
READ_SLACK = 30
CONNECT_SECONDS = 10


def run_key(namespace: str | None, labels: Mapping[str, str]) -> RunKey:
    return labels.get(builders.KIND_LABEL, ""), namespace, labels[builders.RUN_LABEL]


class ChildIndex:
    """One kind of child (`plural`: jobs or pods), slimmed, by run: `get(run)` is the list a
    reconcile reads, as kopf's indexes answered. Changed on the event loop only."""

    def __init__(self, plural: str) -> None:
        self.plural = plural
        self.slim = observed.OBSERVE[plural]
        self.by_run: dict[RunKey, dict[str, dict[str, Any]]] = {}
        self.runs: dict[Child, RunKey] = {}

    def get(self, run: RunKey, default: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        children = self.by_run.get(run)
        return list(children.values()) if children else list(default)

    def __len__(self) -> int:
        return len(self.runs)

    def put(self, child: Child, run: RunKey, slim: dict[str, Any]) -> set[RunKey]:
        """Keep `slim` as `child`'s copy; the runs whose reads changed (none if it is the
        copy already kept: the Job controller's count updates, a pod's binding)."""
        before = self.runs.get(child)
        if before is not None and before != run:  # relabelled: a child of another run now
            return self.remove(child) | self.put(child, run, slim)
        children = self.by_run.setdefault(run, {})
        if children.get(child[1]) == slim:
            return set()
        children[child[1]] = slim
        self.runs[child] = run
        return {run}

    def remove(self, child: Child) -> set[RunKey]:
        run = self.runs.pop(child, None)
        if run is None:
            return set()
        children = self.by_run[run]
        del children[child[1]]
        if not children:
            del self.by_run[run]
        return {run}

    def replace(
        self, namespace: str | None, listed: Iterable[tuple[Child, RunKey, dict[str, Any]]]
    ) -> set[RunKey]:
        """A listing of `namespace` (None: every namespace) replaces what was kept of it."""
        changed: set[RunKey] = set()
        seen: set[Child] = set()
        for child, run, slim in listed:
            seen.add(child)
            changed |= self.put(child, run, slim)
        stale = [c for c in self.runs if c not in seen and namespace in (None, c[0])]
        for child in stale:
            changed |= self.remove(child)
        return changed


class Children:
    """The Job and pod indexes, the watches that fill them, and `listed`: set once every
    watch has listed. `wake(run)` is called on the event loop for each run whose children, as
    a reconcile reads them, changed."""

    def __init__(self, wake: Callable[[RunKey], None] = lambda run: None) -> None:
        self.jobs, self.pods = ChildIndex("jobs"), ChildIndex("pods")
        self.listed = asyncio.Event()
        self.wake = wake
        self.watches: list[ChildWatch] = []
        self._unlisted: set[tuple[str, str | None]] = set()
        self._pending: list[tuple[str, str | None, Any]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, api_client: client.ApiClient, namespaces: list[str]) -> None:
        """Watch Jobs and pods in each of `namespaces` (none: the whole cluster); called on
        the event loop, which then applies what the watches see."""
        self._loop = asyncio.get_running_loop()
        scopes: list[str | None] = list(namespaces) or [None]
        kube = Kube(api_client)
        self.watches = [
            ChildWatch(kube, index.plural, ns, self._deliver)
            for index in (self.jobs, self.pods)
            for ns in scopes
        ]
        self._unlisted = {(watch.plural, watch.namespace) for watch in self.watches}
        for watch in self.watches:
            watch.start()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()

    def _deliver(self, plural: str, namespace: str | None, what: Any) -> None:
        """From a watch's thread: queue what it saw and, unless a drain is queued already,
        have the event loop drain the queue (one wake-up of the loop per burst)."""
        with self._lock:
            self._pending.append((plural, namespace, what))
            if len(self._pending) > 1:
                return
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: the operator stops
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        changed: set[RunKey] = set()
        for plural, namespace, what in pending:
            changed |= self.apply(plural, namespace, what)
        for run in changed:
            self.wake(run)

    def apply(self, plural: str, namespace: str | None, what: Any) -> set[RunKey]:
        """One thing a watch saw: a listing (a list of children) or an event (its type, the
        child, its run and its slim copy). The runs whose reads changed."""
        index = self.jobs if plural == "jobs" else self.pods
        if isinstance(what, list):
            changed = index.replace(namespace, what)
            self._unlisted.discard((plural, namespace))
            if not self._unlisted:
                self.listed.set()
            return changed
        event_type, child, run, slim = what
        if event_type == "DELETED":
            return index.remove(child)
        return index.put(child, run, slim)


def entry(plural: str, body: dict[str, Any]) -> tuple[Child, RunKey, dict[str, Any]]:
    meta = body["metadata"]
    namespace = meta.get("namespace")
    slim = observed.OBSERVE[plural](body)
    return (namespace, meta["name"]), run_key(namespace, meta["labels"]), slim


class Expired(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class ChildWatch(threading.Thread):
    """LIST then WATCH of one kind of child in one scope, in a thread of its own, handing
    each listing and event to `deliver(plural, namespace, what)` (`Children._deliver`)."""

    def __init__(
        self,
        kube: Kube,
        plural: str,
        namespace: str | None,
        deliver: Callable[[str, str | None, Any], None],
    ) -> None:
        super().__init__(name=f"watch {plural} in {namespace or 'all namespaces'}", daemon=True)
        self.kube, self.plural, self.namespace, self.deliver = kube, plural, namespace, deliver
        where = f"/namespaces/{namespace}" if namespace else ""
        self.path = f"{PATHS[plural]}{where}/{plural}"
        self.stopped = threading.Event()
        self.backoff = Backoff(cap=30.0)
        self._response: Any = None

    def stop(self) -> None:
        self.stopped.set()
        response = self._response
        if response is not None:  # unblock the read under way
            with contextlib.suppress(Exception):
                response.shutdown()

    def run(self) -> None:
        version: str | None = None
        while not self.stopped.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                self.backoff.reset()
            except Expired:
                version = None
            except Exception as exc:  # the stream broke or the apiserver refused: again
                if self.stopped.is_set():
                    return
                delay = self.backoff.next()
                log.warning("%s: %s; again in %.1f s", self.name, describe(exc), delay)
                self.stopped.wait(delay)

    def _list(self) -> str:
        listed: list[tuple[Child, RunKey, dict[str, Any]]] = []
        token = ""
        while True:
            query = {"labelSelector": SELECTOR, "limit": str(PAGE)}
            if token:
                query["continue"] = token
            page = json.loads(self._get(query, CONNECT_SECONDS + 60).data)
            listed.extend(entry(self.plural, item) for item in page.get("items") or [])
            token = page["metadata"].get("continue") or ""
            if not token:
                self.deliver(self.plural, self.namespace, listed)
                return str(page["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follow the stream until the apiserver ends it; the last resourceVersion seen."""
        query = {
            "labelSelector": SELECTOR,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        response = self._get(query, WATCH_SECONDS + READ_SLACK)
        self._response = response
        try:
            for event in self._events(response):
                event_type, body = event["type"], event["object"]
                if event_type == "ERROR":
                    if body.get("code") == 410:
                        raise Expired()
                    raise ApiException(status=body.get("code"), reason=body.get("message"))
                version = str(body["metadata"]["resourceVersion"])
                if event_type != "BOOKMARK":
                    child, run, slim = entry(self.plural, body)
                    self.deliver(self.plural, self.namespace, (event_type, child, run, slim))
        finally:
            self._response = None
            response.release_conn()
        return version

    @staticmethod
    def _events(response: Any) -> Iterator[dict[str, Any]]:
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            yield json.loads(line)

    def _get(self, query: dict[str, str], read_seconds: float) -> Any:
        """A GET whose body is read by the caller (a page, or a watch's stream)."""
        path = f"{self.path}?{urllib.parse.urlencode(query)}"
        try:
            return self.kube.open("GET", path, timeout=(CONNECT_SECONDS, read_seconds))
        except ApiException as exc:
            if exc.status == 410:
                raise Expired() from exc
            raise
