"""Live progress of a running run, read from MLflow's REST API (no MLflow client in the
operator image): latest metrics, progress, checkpoint URIs and the run's link.

Active runs are followed (`ProgressReader.follow`): once a poll period, one `runs/search` per
experiment and namespace reads every followed run there whose MLflow run is RUNNING, and a
second one those whose MLflow run ended lately; a search per run cost MLflow ~4 times the CPU
(bench/README.md). An ended run's last read (`request`) is a search of its own."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as dt
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from tradewind.api.status import RunStatus
from tradewind.operator.breaker import CircuitBreaker
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.workers import Ref, stretched

log = logging.getLogger(__name__)
HEADLINE = ("val_loss", "eval_mean_reward", "train_loss")
TAG_LATEST = "tradewind.checkpoint.latest"  # set by tradewind.trainer.tracking
TAG_BEST = "tradewind.checkpoint.best"
TAG_UID = "tradewind.uid"
"""The run's Kubernetes uid, set by the trainers: a run re-created under the same name never
reads its predecessor's MLflow run."""
MLFLOW_TIMEOUT_SECONDS = 5.0
"""Each socket operation of an MLflow request (connect, each read) gives up after this."""
READERS = 4
"""Runs' progress reads in flight at once, on threads of their own (never the reconciles')."""
METRIC_KEY_LENGTH = 250  # MLflow's own limit; status.metrics' keys allow no more
URI_LENGTH = 4096  # status.checkpoint's URIs allow no more
SCAN_PAGE = 100
"""Runs per page of a scan: a page of 100 (with ~90 params each, the trainers' spec) is ~0.4 s
of the MLflow server's CPU, so a trainer's logging call waits no longer behind one."""
SINCE_SLACK_MS = 600_000
"""A scan looks at RUNNING MLflow runs started since its oldest followed run was created, and
at MLflow runs ended within the last two periods, each less this (the trainer's clock against
the operator's): older RUNNING runs are ones whose trainer died without ending them."""
Key = tuple[str | None, str]
RunId = tuple[str, str | None]
"""A run as its MLflow runs' tags name it: (name, uid)."""
Found = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Follow:
    """A followed run (its name is its Ref's): whose MLflow run to find, and whom to hand it
    to."""

    experiment: str
    uid: str | None
    since_ms: int
    """When the run was created (ms since the epoch), less SINCE_SLACK_MS: its MLflow runs
    started after."""
    done: Found


class ProgressReader:
    """Finds the MLflow run of a resource by its tags. With credentials (as MLflow's own
    client takes them: a username and password, or a token) every request carries them.

    Every request has a timeout and goes through `breaker`: while MLflow is down or black-holed
    the callers fail at once (and statuses keep what was last read). Runs' progress is read
    in the background (`request`), never in a reconcile."""

    def __init__(
        self,
        tracking_uri: str | None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        breaker: CircuitBreaker | None = None,
        poll_seconds: float = 15.0,
        reads_per_second: float = 20.0,
    ) -> None:
        self.uri = tracking_uri.rstrip("/") if tracking_uri else None
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif username and password:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        self.refused = False  # MLflow said 401/403 (warned once)
        self.breaker = breaker or CircuitBreaker(f"MLflow at {self.uri}")
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._reading: set[Key] = set()
        self._experiments: dict[str, str] = {}  # name -> id
        self.poll_seconds, self.reads_per_second = poll_seconds, reads_per_second
        self.following: dict[Ref, Follow] = {}
        self._scanning: set[tuple[str, str]] = set()  # (experiment, namespace)
        self._scanner: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: OperatorSettings, breaker: CircuitBreaker | None = None
    ) -> Self:
        password, token = settings.mlflow_tracking_password, settings.mlflow_tracking_token
        return cls(
            settings.mlflow_tracking_uri,
            settings.mlflow_tracking_username,
            password.get_secret_value() if password else None,
            token.get_secret_value() if token else None,
            breaker,
            settings.status_poll_seconds,
            settings.periodic_reconciles_per_second,
        )

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One MLflow request. A timeout, a refused connection or a 5xx counts against the
        breaker; CircuitOpenError (an OSError) when the breaker is open."""
        assert self.uri is not None
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers)
        self.breaker.before_call()
        try:
            with urllib.request.urlopen(request, timeout=MLFLOW_TIMEOUT_SECONDS) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                self.breaker.failure(exc)
            else:
                self.breaker.success()  # it answered
            if exc.code in (401, 403) and not self.refused:
                self.refused = True
                log.warning(
                    "MLflow at %s refused the operator (HTTP %s): runs' progress and metrics "
                    "stay out of their status until the operator has MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) it accepts",
                    self.uri,
                    exc.code,
                )
            raise
        except OSError as exc:  # refused, reset, timed out (URLError is an OSError)
            self.breaker.failure(exc)
            raise
        except http.client.HTTPException as exc:  # a malformed or cut-off answer
            self.breaker.failure(exc)
            raise ConnectionError(f"MLflow at {self.uri}: {exc!r}") from exc
        self.breaker.success()
        return dict(json.loads(raw))

    def search_runs(
        self,
        experiment: str,
        name: str,
        namespace: str,
        uid: str | None = None,
        newest_first: bool = True,
        most: int = 1,
    ) -> list[dict[str, Any]]:
        """The MLflow runs of a resource, found by its tags (its uid's too, when given); none
        when the experiment does not exist. OSError when MLflow cannot be reached."""
        if self.uri is None:
            return []
        experiment_id = self._experiment_id(experiment)
        if experiment_id is None:
            return []
        tags = {"tradewind.name": name, "tradewind.namespace": namespace}
        if uid:
            tags[TAG_UID] = uid
        found = self._search(
            experiment,
            {
                "experiment_ids": [experiment_id],
                "filter": " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items()),
                "order_by": [f"attributes.start_time {'DESC' if newest_first else 'ASC'}"],
                "max_results": most,
            },
        )
        return [dict(run) for run in found.get("runs") or []]

    def _experiment_id(self, experiment: str) -> str | None:
        """The experiment's id, looked up once (one request per read, not two); None if
        MLflow has no such experiment."""
        experiment_id = self._experiments.get(experiment)
        if experiment_id is None:
            query = urllib.parse.urlencode({"experiment_name": experiment})
            try:
                exp = self._call(f"experiments/get-by-name?{query}")["experiment"]
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise
            experiment_id = self._experiments[experiment] = str(exp["experiment_id"])
        return experiment_id

    def _search(self, experiment: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call("runs/search", payload)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # e.g. the experiment was deleted: look it up again
                self._experiments.pop(experiment, None)
            raise

    def scan(
        self,
        experiment: str,
        namespace: str,
        since_ms: int,
        ended_since_ms: int,
        wanted: set[RunId],
    ) -> dict[RunId, dict[str, Any]]:
        """The newest MLflow run (slimmed) of each run in `wanted` among the MLflow runs of
        `namespace` in `experiment` that are RUNNING and started at or after `since_ms`, or
        that ended at or after `ended_since_ms` (a run's last metrics and checkpoint tags come
        as it ends, seconds before its pods do). Page by page: a page's params (the whole
        spec, ~90 of each run) are dropped before the next is read. OSError when MLflow
        cannot be reached."""
        if self.uri is None or (experiment_id := self._experiment_id(experiment)) is None:
            return {}
        newest: dict[RunId, tuple[int, dict[str, Any]]] = {}
        tag = f"tags.\"tradewind.namespace\" = '{namespace}'"
        for condition in (
            f"attributes.status = 'RUNNING' and attributes.start_time >= {since_ms}",
            f"attributes.end_time >= {ended_since_ms}",
        ):
            payload: dict[str, Any] = {
                "experiment_ids": [experiment_id],
                "filter": f"{tag} and {condition}",
                "max_results": SCAN_PAGE,
            }
            while True:
                found = self._search(experiment, payload)
                for run in found.get("runs") or []:
                    _keep_if_newer(newest, run, wanted)
                if not (token := found.get("next_page_token")):
                    break
                payload["page_token"] = token
        return {run: slim for run, (_, slim) in newest.items()}

    def find_runs(
        self,
        experiment: str,
        name: str,
        namespace: str,
        uid: str | None = None,
        newest_first: bool = True,
        most: int = 1,
    ) -> list[dict[str, Any]]:
        """`search_runs`, with none when MLflow cannot be reached or answers nonsense."""
        try:
            return self.search_runs(experiment, name, namespace, uid, newest_first, most)
        except (OSError, KeyError, ValueError) as exc:
            log.debug("no MLflow runs for %s/%s: %s", namespace, name, exc)
            return []

    def find_run(
        self, experiment: str, name: str, namespace: str, uid: str | None = None
    ) -> dict[str, Any] | None:
        """The resource's newest MLflow run."""
        runs = self.find_runs(experiment, name, namespace, uid)
        return runs[0] if runs else None

    def period(self) -> float:
        """How often the followed runs are read: poll_seconds, or longer with so many runs
        followed that each read once a period would be more than reads_per_second."""
        return stretched(self.poll_seconds, len(self.following), self.reads_per_second)

    def follow(
        self, ref: Ref, uid: str | None, experiment: str, created: str | None, done: Found
    ) -> None:
        """Read the run `ref` (kind, namespace, name) every `period()` until `unfollow`, with
        the other followed runs of its namespace and experiment: `done(found)` on the event
        loop with its newest MLflow run (slimmed) that is RUNNING or ended lately, after each
        scan that found one.
        `created`: the run's creationTimestamp. The first scan starts at once."""
        if self.uri is None:
            return
        since = 0
        if created:
            stamp = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
            since = max(0, int(stamp * 1000) - SINCE_SLACK_MS)
        follow = Follow(experiment, uid, since, done)
        if self.following.get(ref) != follow:
            self.following[ref] = follow
        if self._scanner is None:
            self._scanner = asyncio.get_running_loop().create_task(self._scan_while_following())

    def unfollow(self, ref: Ref) -> None:
        self.following.pop(ref, None)

    async def _scan_while_following(self) -> None:
        try:
            while self.following:
                groups: dict[tuple[str, str], list[tuple[Ref, Follow]]] = {}
                for ref, follow in self.following.items():
                    groups.setdefault((follow.experiment, ref[1] or ""), []).append((ref, follow))
                for group, follows in groups.items():
                    if group not in self._scanning and not self.breaker.is_open:
                        self._start_scan(group, follows)
                await asyncio.sleep(self.period())
        finally:
            self._scanner = None

    def _start_scan(self, group: tuple[str, str], follows: list[tuple[Ref, Follow]]) -> None:
        since = min(follow.since_ms for _, follow in follows)
        ended_since = int(time.time() * 1000 - 2000 * self.period()) - SINCE_SLACK_MS
        wanted = {(ref[2], follow.uid) for ref, follow in follows}
        future = asyncio.get_running_loop().run_in_executor(
            self._executor(), self.scan, *group, since, ended_since, wanted
        )
        self._scanning.add(group)

        def finished(future: asyncio.Future[dict[RunId, dict[str, Any]]]) -> None:
            self._scanning.discard(group)
            if future.cancelled():
                return
            if (exc := future.exception()) is not None:
                log.debug("no MLflow scan of %s in %s: %s", group[1], group[0], exc)
                return
            newest = future.result()
            for ref, follow in follows:
                run = newest.get((ref[2], follow.uid))
                if run is not None and self.following.get(ref) == follow:  # still followed
                    follow.done(run)

        future.add_done_callback(finished)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(READERS, "mlflow-progress")
        return self._pool

    def request(self, key: Key, uid: str | None, experiment: str, done: Found) -> bool:
        """Read the newest MLflow run of the run `key` (namespace, name) and `uid` in the
        background, on this reader's own threads (READERS at most): unless one read of it is
        under way already, or the breaker is open. `done(found)` is called on the event loop
        once a run was found (slimmed: what `fold_progress` reads). Whether a read started.
        An ended run's last read (it is followed no more)."""
        if self.uri is None or key in self._reading or self.breaker.is_open:
            return False
        namespace, name = key
        future = asyncio.get_running_loop().run_in_executor(
            self._executor(), self.find_run, experiment, name, namespace or "", uid
        )
        self._reading.add(key)

        def finished(future: asyncio.Future[dict[str, Any] | None]) -> None:
            self._reading.discard(key)
            if future.cancelled() or future.exception() is not None:
                return
            found = future.result()
            if found is not None and isinstance(found.get("info"), dict):
                done(_slim(found))

        future.add_done_callback(finished)
        return True


def _keep_if_newer(
    newest: dict[RunId, tuple[int, dict[str, Any]]], mlflow_run: dict[str, Any], wanted: set[RunId]
) -> None:
    """Keep `mlflow_run` (slimmed) under the run that logged it (its name and uid tags; and its
    name alone, for a follower that knows no uid) if that run is `wanted` and it is the newest
    of that run's MLflow runs seen so far."""
    info, data = mlflow_run.get("info"), mlflow_run.get("data") or {}
    tags = {t.get("key"): t.get("value") for t in data.get("tags") or []}
    name = tags.get("tradewind.name")
    if not isinstance(info, dict) or not isinstance(name, str):
        return
    try:
        started = int(info.get("start_time") or 0)
    except (TypeError, ValueError):
        started = 0
    for run in ((name, tags.get(TAG_UID)), (name, None)):
        if run in wanted and (run not in newest or newest[run][0] < started):
            newest[run] = (started, _slim(mlflow_run))


def _slim(mlflow_run: dict[str, Any]) -> dict[str, Any]:
    """What `fold_progress` reads of an MLflow run (not its params: the whole spec)."""
    data = mlflow_run.get("data") or {}
    tags = [t for t in data.get("tags") or [] if t.get("key") in (TAG_LATEST, TAG_BEST)]
    info = mlflow_run["info"]
    return {
        "info": {k: str(info.get(k, "")) for k in ("run_id", "experiment_id")},
        "data": {"metrics": data.get("metrics") or [], "tags": tags},
    }


def headline(metrics: dict[str, float]) -> str | None:
    """What `kubectl get` shows: the test backtest's Sharpe ratio with its 95% interval and
    PSR once the run has one, else the first of HEADLINE it has."""
    sharpe = [metrics.get(f"backtest_{k}") for k in ("sharpe", "sharpe_ci_low", "sharpe_ci_high")]
    psr = metrics.get("backtest_psr")
    if None not in sharpe and psr is not None:
        value, low, high = sharpe
        return f"sharpe={value:.2f} [{low:.2f}, {high:.2f}] psr={psr:.2f}"
    for key in HEADLINE:
        if key in metrics:
            return f"{key}={metrics[key]:.4g}"
    return None


def fold_progress(
    status: RunStatus, mlflow_run: dict[str, Any], uri: str, epochs: int | None
) -> RunStatus:
    """The status with an MLflow run's latest metrics, progress, checkpoints and link;
    `epochs`: the run's total, if it counts epochs."""
    new = status.model_copy(deep=True)
    data, info = mlflow_run.get("data", {}), mlflow_run["info"]
    # Nothing MLflow holds may make the status invalid, or every status write would fail:
    # NaN and infinities have no JSON form (the apiserver refuses them) and the API refuses
    # them, so a metric that is not finite is left out, as is a key longer than the schema's;
    # longer strings are cut by the status models, but a cut URI points nowhere: left out.
    metrics = {
        str(m["key"]): value
        for m in data.get("metrics", [])
        if len(str(m.get("key", ""))) <= METRIC_KEY_LENGTH
        and (value := _finite(m.get("value"))) is not None
    }
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    new.metrics = dict(sorted(metrics.items())[:128])
    if "epoch" in metrics and epochs:
        epoch = min(max(int(metrics["epoch"]), 0), epochs)
        new.progress.epoch, new.progress.total_epochs = epoch, int(epochs)
        new.progress.percent = min(100, int(100 * epoch / epochs))
    elif "progress" in metrics:
        new.progress.percent = min(100, max(0, int(metrics["progress"])))
    new.headline_metric = headline(metrics) or new.headline_metric
    new.checkpoint.latest = _uri(tags.get(TAG_LATEST), new.checkpoint.latest)
    new.checkpoint.best = _uri(tags.get(TAG_BEST), new.checkpoint.best)
    new.mlflow.run_id = info["run_id"]
    new.mlflow.url = f"{uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    return new


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _uri(value: Any, previous: str | None) -> str | None:
    """A checkpoint URI from a tag, unless it is too long for the status (then the last one)."""
    if isinstance(value, str) and len(value) <= URI_LENGTH:
        return value
    return previous
