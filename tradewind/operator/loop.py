"""A run's reconcile loop (`RunWorker`, an asyncio task kept in a `workers.Workers` registry)
and the operator's start-up (`tradewind operator`)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
from kubernetes import client, config

from tradewind.api.resources import TrainingRun
from tradewind.api.status import RunStatus
from tradewind.operator import builders, leader, metrics
from tradewind.operator.children import Children
from tradewind.operator.event_budget import EventBudget
from tradewind.operator.kube import Gone, Kube, NamespaceTerminating
from tradewind.operator.progress import ProgressReader, fold_progress
from tradewind.operator.reconcile import SpecCache, reconcile
from tradewind.operator.retry import Backoff, record_failure
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.status import TERMINAL, Decision
from tradewind.operator.workers import Worker, Workers, still_there, stretched

log = logging.getLogger(__name__)
ACTIVE = ("Pending", "Running", "Restarting")


def setup(memo: kopf.Memo) -> None:
    """Clients, settings and the registries of workers, shared by every handler and worker
    (the children's watches start in `start_watches`)."""
    _load_kube_config()
    memo.settings = settings = OperatorSettings()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = settings.reconcile_workers * 2
    budget = EventBudget(settings.normal_events_per_second, settings.normal_events_burst)
    memo.kube = Kube(
        client.ApiClient(configuration), timeout=settings.api_timeout_seconds, event_budget=budget
    )
    # Reconciles run in threads (asyncio.to_thread): enough of them that a thousand runs do
    # not queue behind the default pool of min(32, cores + 4).
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=settings.reconcile_workers)
    )
    memo.progress = ProgressReader.from_settings(settings)
    memo.run_workers = Workers("reconcile")
    memo.run_phases = collections.Counter()  # runs by the phase they are counted under
    memo.children = Children(wake=memo.run_workers.wake)
    memo.sweep_workers = Workers("sweep")
    # At most as many reconciles in flight as threads (others, e.g. Sweeps', share them):
    # each reads the run and its children when it gets its thread.
    memo.reconcile_slots = asyncio.Semaphore(max(1, settings.reconcile_workers - 4))
    memo.start_slots = asyncio.Semaphore(settings.concurrent_starts)


def start_watches(memo: kopf.Memo) -> None:
    """The watches of the runs' Jobs and pods, in the namespaces kopf watches (`memo.namespaces`,
    from `run_operator`; none: all), on a client of their own: each stream holds its
    connection for minutes."""
    watch_client = client.ApiClient(client.Configuration.get_default_copy())
    memo.children.start(watch_client, list(getattr(memo, "namespaces", None) or []))


COALESCE_SECONDS = 0.5
"""A run reconciles at most once per this interval: the burst of child events an attempt
brings (pods created, bound, started, ready; the Job's status) folds into fewer reconciles and
status writes. The first event after a quiet spell is handled at once."""
COUNTS_SECONDS = 60.0
"""A Pending run's status write that only moves pod counts on (1/2 pods running) waits this
long: on a busy cluster a gang's pods start many seconds apart, and the write that says
Running carries both. Phase and condition changes (pods refused, held, failed) are written at
once; a count is at most a resync period stale. A count write per run is the dearest request
an operator makes (bench/README.md, issue 17): at 1000 runs, 15 s still let ~0.8 per run
through."""
EXPECT_SECONDS = 60.0
"""After creating an attempt's children, how long to wait for the watch to show its Job before
creating them again (level-based: the Job may have been deleted meanwhile). A minute: with a
thousand runs starting on a saturated apiserver the watch lagged past 30 s for one run in
five, and each of those created its three children again only to be told they exist."""
RESYNC_SECONDS = 60.0
"""Level-based safety net: every run reconciles at least this often, events or not (longer
with many runs: `stretched`)."""


class RunWorker(Worker):
    """One run's reconcile loop, an asyncio task: woken by the run's watch events and its
    children's; also at its deadline or TTL. With MLflow, an active run is followed
    (`ProgressReader.follow`: its progress is read with its namespace's every poll period),
    and a read wakes the worker only when it found what the status does not hold yet; one more
    read once the run has ended, for its last metrics. `body` is the run slimmed
    (`workers.slim_body`)."""

    def __init__(self, body: dict[str, Any], memo: kopf.Memo) -> None:
        super().__init__(body)
        self.memo = memo
        self.spec = SpecCache()
        # Our last status write's resourceVersion, and the status until the watch delivers it.
        self.written: dict[str, Any] = {}
        self.counted: str | None = None  # the phase this run is counted under in the gauge
        self.deferred_since: float | None = None  # a count-only status unwritten since then
        self.found: dict[str, Any] | None = None  # an MLflow read not yet in the status
        # A run seen active gets one more MLflow read once it has ended: the polls stop at
        # the phase change, before its last metrics. "due", then "read" once one started.
        self.final_read: str | None = None
        self.created: tuple[int, float] | None = None  # (attempt, when) children were created
        self.backoff = Backoff()  # its cap: settings.retry_max_seconds, set where used
        self.retry_in = 0.0  # after a failed reconcile

    def update(self, body: dict[str, Any]) -> None:
        slim = self.spec.without_parsed_spec(body)
        version = slim["metadata"].get("resourceVersion")
        if self.written and not _older(version, self.written["version"]):
            self.written.pop("status", None)  # the body holds it now (or newer)
        if self.written and version == self.written["version"]:
            self.body = slim  # our own status write coming back: nothing new to act on
            return
        super().update(slim)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopped:
                self.wakeup.clear()
                started = loop.time()
                decision = await self._reconcile_once()
                self.body = self.spec.without_parsed_spec(self.body)
                timeout = self._next_wake(decision, self.memo.settings)
                del decision  # a sleeping worker holds no status model (~7 KB a run)
                if self.deferred_since is not None:
                    timeout = min(timeout, self.deferred_since + COUNTS_SECONDS - loop.time())
                await self.sleep(timeout)
                rest = started + COALESCE_SECONDS - loop.time()
                if rest > 0 and not self.stopped:
                    await asyncio.sleep(rest)
        finally:
            self.memo.progress.unfollow(self.ref)
            if self.counted:
                metrics.RUNS_BY_PHASE.labels(self.body["kind"], self.counted).dec()
                self.memo.run_phases[self.counted] -= 1

    async def _reconcile_once(self) -> Decision | None:
        """One reconcile in a worker thread, and what follows from it: the gauges, MLflow
        progress. None if it failed (it is retried). The run and its children are read once a
        thread is free, not before queueing for one: under load that wait is seconds long,
        and a reconcile must not act on what the watches showed before it."""
        await self.memo.children.listed.wait()  # until then, every Job would look missing
        starting = self._start_slot() if self._starting() else contextlib.nullcontext()
        async with starting, self.memo.reconcile_slots:
            return await self._reconcile_now(asyncio.get_running_loop().time())

    @contextlib.asynccontextmanager
    async def _start_slot(self) -> AsyncIterator[None]:
        """One of the start slots, the wait for it counted in `tradewind_runs_waiting_to_start`
        (a burst of runs is a queue here: their status stays empty until they start)."""
        slots: asyncio.Semaphore = self.memo.start_slots
        with metrics.RUNS_WAITING_TO_START.track_inprogress():
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    def _starting(self) -> bool:
        """Whether this reconcile may create the run's first children: a run without a
        status yet and without a Job. Such reconciles take a start slot too (their order
        and pace only; the reconcile decides what to create)."""
        return (
            not (self.body.get("status") or {}).get("phase")
            and self.created is None
            and not self.memo.children.jobs.get(self.ref)
        )

    def _wrote(self, version: str, status: RunStatus) -> None:
        """Our status write, `version`: its echo from the watch is no news, and until the
        watch delivers it the next reconcile decides from `status`."""
        self.written = {"version": version}
        if _older(self.body["metadata"].get("resourceVersion"), version):
            dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
            self.written["status"] = dumped

    def _status(self) -> dict[str, Any] | None:
        """The run's status as last seen, or as we last wrote it if the watch has not
        delivered our write yet: decide from what we wrote, not from the stale copy (no
        double restarts, no duplicate Events)."""
        written: dict[str, Any] | None = self.written.get("status")
        if written is not None and _older(
            self.body["metadata"].get("resourceVersion"), self.written["version"]
        ):
            return written
        return self.body.get("status")

    def _inputs(self, now: float) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """The run (its status as `_status` says) and its children as the indexes show
        them."""
        snapshot = dict(self.body)
        if (status := self._status()) is not None:
            snapshot["status"] = status
        children: Children = self.memo.children
        jobs, pods = children.jobs.get(self.ref), children.pods.get(self.ref)
        if self.created is not None and (
            now - self.created[1] > EXPECT_SECONDS
            or any(
                j["metadata"]["labels"].get(builders.ATTEMPT_LABEL) == str(self.created[0])
                for j in jobs
            )
        ):
            self.created = None
        return snapshot, jobs, pods

    async def _reconcile_now(self, now: float) -> Decision | None:
        settings: OperatorSettings = self.memo.settings
        kind = self.body["kind"]
        snapshot, jobs, pods = self._inputs(now)
        defer = self.deferred_since is None or now - self.deferred_since < COUNTS_SECONDS
        try:
            with metrics.RECONCILE_SECONDS.labels(kind).time():
                decision = await asyncio.to_thread(
                    reconcile, snapshot, jobs, pods, self.memo.kube, settings,
                    spec_cache=self.spec, defer_counts=defer,
                    created_attempt=self.created[0] if self.created else None,
                )  # fmt: skip
            if "create_attempt" in decision.actions:  # from when the creates returned
                self.created = (decision.status.attempt, asyncio.get_running_loop().time())
            if not decision.deferred:
                self.deferred_since = None
            elif self.deferred_since is None:
                self.deferred_since = now
            self.counted = _count(kind, self.counted, decision.status.phase, self.memo.run_phases)
            if decision.status.restarts > int((snapshot.get("status") or {}).get("restarts") or 0):
                metrics.RESTARTS.labels(kind).inc()
            if decision.written_version is not None:
                self._wrote(decision.written_version, decision.status)
            await self._progress(snapshot, decision)
        except Gone as exc:  # deleted (the watch may never say so: a relist sends no DELETED)
            if isinstance(exc, NamespaceTerminating):
                log.info("%s %s/%s: its namespace is being deleted: its worker stops", *self.ref)
            else:
                log.info("%s %s/%s is gone: its worker stops", *self.ref)
            self.stop()
            self.memo.run_workers.discard(self)
            return None
        except Exception as exc:  # retried with backoff, one log line per failure
            metrics.RECONCILE_ERRORS.labels(kind).inc()
            what = "reconcile of {} {}/{}".format(*self.ref)
            self.backoff.cap = settings.retry_max_seconds
            self.retry_in = record_failure(log, what, exc, self.backoff)
            return None
        return decision

    async def exists(self) -> bool:
        """Whether the run is still there (asked after a relist of its kind left it out)."""
        return await still_there(self.memo.kube, self.ref, self.uid)

    async def _progress(self, snapshot: dict[str, Any], decision: Decision) -> None:
        """MLflow progress, read in the background (`ProgressReader`: threads of its own, a
        circuit breaker; MLflow never holds a reconcile slot): an active run is followed, an
        ended one no more; write the last read into the status; ask for an ended run's final
        read."""
        reader: ProgressReader = self.memo.progress
        run = self.spec.run
        if reader.uri is None or run is None:
            return
        if decision.status.phase in ACTIVE:
            created = self.body["metadata"].get("creationTimestamp")
            experiment = run.spec.tracking.experiment
            reader.follow(self.ref, self.uid, experiment, created, self._read_while_active)
        else:
            reader.unfollow(self.ref)
        found = self._due_read(decision.status.phase, run.spec.tracking.experiment)
        if found is None:
            return
        new = fold_progress(decision.status, found, reader.uri, _epochs(run))
        if new != decision.status:
            version = await asyncio.to_thread(self.memo.kube.patch_status, snapshot, new)
            if version is not None:
                self._wrote(version, new)

    def _due_read(self, phase: str, experiment: str) -> dict[str, Any] | None:
        """What was read, if it may go into the status now; an ended run's final read is asked
        for here (an active run's reads come from following it)."""
        reader: ProgressReader = self.memo.progress
        found, self.found = self.found, None
        if phase in ACTIVE:
            self.final_read = "due"
            return found
        if self.final_read == "due":  # what was read while it was active is dropped
            if reader.request(self.key, self.uid, experiment, self._read_finally):
                self.final_read = "read"
            return None
        if self.final_read == "read" and found is not None:
            self.final_read = None
            return found
        return None

    def _read_while_active(self, found: dict[str, Any]) -> None:
        """A read's result: kept, and the worker woken, only if the status lacks some of it
        (the status is parsed here, not kept between reconciles: ~7 KB a run)."""
        run, uri = self.spec.run, self.memo.progress.uri
        if run is None or uri is None:  # not reconciled yet
            return
        status = RunStatus.model_validate(self._status() or {})
        if fold_progress(status, found, uri, _epochs(run)) != status:
            self.found = found
            self.wakeup.set()

    def _read_finally(self, found: dict[str, Any]) -> None:
        self.found = found
        self.wakeup.set()

    def _next_wake(self, decision: Decision | None, settings: OperatorSettings) -> float:
        """Seconds until this run needs a reconcile that no event will bring: a retry (with
        backoff) of a failed reconcile or of a refused child, a look at missing pods, its
        deadline, its TTL, MLflow progress, or the resync."""
        if decision is None:  # failed: retry after the backoff
            return self.retry_in
        status, now = decision.status, dt.datetime.now(dt.UTC)
        run = self.spec.run
        runs = len(self.memo.run_workers.by_key)
        wake = stretched(RESYNC_SECONDS, runs, settings.periodic_reconciles_per_second)
        if decision.retry:
            self.backoff.cap = settings.retry_max_seconds
            wake = self.backoff.next(decision.retry_after)
        else:
            self.backoff.reset()
        if decision.recheck_seconds is not None:
            wake = min(wake, decision.recheck_seconds)
        if status.phase not in ACTIVE and self.final_read == "due":
            wake = min(wake, settings.status_poll_seconds)  # once a read under way made room
        if run is not None:
            deadline, ttl = run.spec.active_deadline_seconds, run.spec.ttl_seconds_after_finished
            if status.phase in ACTIVE and deadline and status.start_time:
                due = status.start_time + dt.timedelta(seconds=deadline)
                wake = min(wake, (due - now).total_seconds() + 0.1)
            if status.phase in TERMINAL and ttl is not None and status.completion_time:
                due = status.completion_time + dt.timedelta(seconds=ttl)
                wake = min(wake, (due - now).total_seconds() + 0.1)
        return max(wake, 0.0)


def _epochs(run: Any) -> int | None:
    """A run's epochs in all, for its progress; None where it does not count them (an RLRun,
    or own code: an entrypoint reports a `progress` metric instead)."""
    if isinstance(run, TrainingRun) and run.spec.entrypoint is None:
        return run.spec.training.epochs
    return None


def _count(kind: str, counted: str | None, phase: str, tally: collections.Counter[str]) -> str:
    """Move this run in the runs-by-phase gauge and in `tally` from where it was counted to
    `phase`."""
    if counted != phase:
        if counted:
            metrics.RUNS_BY_PHASE.labels(kind, counted).dec()
            tally[counted] -= 1
        metrics.RUNS_BY_PHASE.labels(kind, phase).inc()
        tally[phase] += 1
    return phase


def _older(version: str | None, than: str) -> bool:
    """Whether the cached body predates our write. resourceVersions are etcd revisions in
    practice; where one is not a number, trust the body."""
    try:
        return version is not None and int(version) < int(than)
    except ValueError:
        return False


M_ARENA_MAX = -8  # glibc's mallopt parameter


def _fewer_malloc_arenas() -> None:
    """glibc gives threads their own malloc arenas (up to 8 per core), so what the reconcile
    threads free stays spread over many of them; two arenas keep the RSS near what is in
    use. Called before the threads start; a no-op where libc is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def run_operator(
    namespaces: list[str],
    liveness: str | None = None,
    metrics_port: int | None = None,
    json_logs: bool = False,
    verbose: bool = False,
    leader_election: bool | None = None,
) -> None:
    """Run the operator in this process until interrupted; with leader election (the
    default; `leader_election` overrides the setting), only once this process leads: until
    then it serves liveness and metrics and writes nothing but its bids for the Lease."""
    import tradewind.operator.main  # noqa: F401  (registers the handlers)

    _fewer_malloc_arenas()

    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL
    )
    if not verbose:  # one line per watch event and handler is too much at a thousand runs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if metrics_port is not None:
        metrics.serve(metrics_port)
    settings = OperatorSettings()
    if leader_election is not None:
        settings = settings.model_copy(update={"leader_election": leader_election})
    elector = _elector(settings) if settings.leader_election else None
    if elector is not None:
        with leader.standby_health(liveness), leader.exit_on_signals():
            elector.acquire()
        elector.hold(on_lost=leader.exit_lease_lost)
    log.info("tradewind operator starting; namespaces: %s", ", ".join(namespaces) or "all")
    kopf_settings = kopf.OperatorSettings()
    # A list of namespaces (exact names) needs no cluster-wide watch of namespaces or CRDs:
    # the chart's watchNamespaces mode grants neither.
    kopf_settings.scanning.disabled = bool(namespaces)
    try:
        kopf.run(
            memo=kopf.Memo(namespaces=namespaces),  # the children's watches' too
            clusterwide=not namespaces,
            namespaces=namespaces,
            settings=kopf_settings,
            standalone=True,  # one replica works at a time: the Lease, not kopf's peering
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:  # kopf has stopped every handler and worker
            elector.release()


def _load_kube_config() -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def _elector(settings: OperatorSettings) -> leader.LeaderElector:
    """The Lease this process bids for, on a client of its own: renewals never wait behind
    the reconciles' connection pool."""
    _load_kube_config()
    lease = leader.LeaseConfig(
        namespace=settings.lease_namespace or leader.default_namespace(),
        name=settings.lease_name,
        identity=settings.lease_identity or leader.default_identity(),
        duration=settings.lease_duration_seconds,
        renew_deadline=settings.lease_renew_deadline_seconds,
        retry=settings.lease_retry_seconds,
    )
    api_client = client.ApiClient(client.Configuration.get_default_copy())
    return leader.LeaderElector(lease, leader.KubeLeaseApi(api_client))
