"""One reconcile of a Sweep: validate it, load its Optuna study, account for every running
trial, start trials up to `parallelism`, write the status.

Level-based and idempotent. The study (the operator's Optuna RDB storage) is the record of
trials; each child run is named `<sweep>-<trial number>` and labelled with that number. Every
reconcile first accounts for each Running trial: its child is created if missing (same name,
same parameters), its MLflow history is reported to the pruner (a pruned trial is told first
and its child deleted after), a finished child's final metrics are told. Only then are new
trials asked. So an operator killed at any point neither loses a trial (a Running trial
without a child gets one) nor duplicates one (children are found by trial number; creating
an existing name is a no-op), and children of finished trials that are still active are
deleted.

Optuna (and numpy under it) is imported only when a Sweep is reconciled: importing the
operator stays light.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from tradewind.api import GROUP, KINDS, VERSION
from tradewind.api.identity import SWEEP_LABEL
from tradewind.api.manifest import ManifestError, parse_resource
from tradewind.api.resources import Sweep
from tradewind.api.status import SweepStatus, TrialCounts
from tradewind.operator.kube import MANAGER, Kube
from tradewind.operator.progress import ProgressReader
from tradewind.operator.settings import OperatorSettings
from tradewind.operator.sweep_status import (
    RUNNING_CHILD,
    TERMINAL,
    Child,
    Outcome,
    Tally,
    apply_outcome,
    build_child,
    child_name,
    invalid_status,
    observe_child,
    outcome,
    study_name,
    timed_out,
    trials_to_start,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)
REASON_ATTR = "tradewind.reason"
"""Trial user attribute: why a trial failed, or that the operator stopped it."""
Events = list[tuple[str, str, str]]


class TrialMetrics(ProgressReader):
    """A child run's MLflow run: its latest metrics and one metric's history by step."""

    def latest(self, experiment: str, name: str, namespace: str, uid: str) -> dict[str, Any] | None:
        """The MLflow run of a child (None when MLflow has none, or cannot be reached)."""
        return self.find_run(experiment, name, namespace, uid or None)

    def final_metrics(
        self, experiment: str, name: str, namespace: str, uid: str
    ) -> dict[str, float]:
        """The latest value of every metric across all of a child's MLflow runs (an RLRun's
        agents and its combine step log to runs of their own), newer runs winning. OSError
        when MLflow cannot be reached: the trial is told later, not failed for want of it."""
        metrics: dict[str, float] = {}
        runs = self.search_runs(experiment, name, namespace, uid or None, False, most=100)
        for run in runs:
            for m in (run.get("data") or {}).get("metrics", []):
                metrics[m["key"]] = float(m["value"])
        return metrics

    def history(self, run_id: str, key: str) -> dict[int, float]:
        """step -> value of metric `key` (the last logged value of a step wins)."""
        if self.uri is None:
            return {}
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
        try:
            metrics = self._call(f"metrics/get-history?{query}").get("metrics") or []
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("no MLflow history of %s for run %s: %s", key, run_id, exc)
            return {}
        out: dict[int, float] = {}
        for m in sorted(metrics, key=lambda m: (int(m.get("timestamp", 0)), int(m.get("step", 0)))):
            out[int(m.get("step", 0))] = float(m["value"])
        return out

    def sweep_run(
        self, experiment: str, name: str, namespace: str, study: str
    ) -> dict[str, Any] | None:
        """The Sweep's own MLflow run (the trials' runs nest under it): found by its tags, or
        created. None without MLflow, or when it cannot be reached (tried again later)."""
        if self.uri is None:
            return None
        tags = {"tradewind.name": name, "tradewind.namespace": namespace,
                "tradewind.kind": "Sweep", "tradewind.study": study}  # fmt: skip
        try:
            experiment_id = self._experiment_id(experiment)
            query = " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items())
            found = self._call(
                "runs/search",
                {"experiment_ids": [experiment_id], "filter": query, "max_results": 1},
            )
            if found.get("runs"):
                return dict(found["runs"][0]["info"])
            created = self._call(
                "runs/create",
                {
                    "experiment_id": experiment_id,
                    "run_name": name,
                    "start_time": int(time.time() * 1000),
                    "tags": [{"key": k, "value": v} for k, v in tags.items()],
                },
            )
            return dict(created["run"]["info"])
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log.debug("no MLflow run for sweep %s/%s: %s", namespace, name, exc)
            return None

    def finish_sweep_run(self, run_id: str, failed: bool, metrics: dict[str, float]) -> None:
        """Log the sweep's result (e.g. best_val_loss) and end its run."""
        if self.uri is None:
            return
        now = int(time.time() * 1000)
        try:
            if metrics:
                batch = [{"key": k, "value": v, "timestamp": now, "step": 0}
                         for k, v in metrics.items()]  # fmt: skip
                self._call("runs/log-batch", {"run_id": run_id, "metrics": batch})
            status = "FAILED" if failed else "FINISHED"
            self._call("runs/update", {"run_id": run_id, "status": status, "end_time": now})
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            log.warning("MLflow run %s of a sweep not ended: %s", run_id, exc)

    def _experiment_id(self, experiment: str) -> str:
        query = urllib.parse.urlencode({"experiment_name": experiment})
        try:
            return str(
                self._call(f"experiments/get-by-name?{query}")["experiment"]["experiment_id"]
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        return str(self._call("experiments/create", {"name": experiment})["experiment_id"])


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
_STORAGES_LOCK = threading.Lock()


def storage(url: str) -> optuna.storages.BaseStorage:
    """One Optuna RDB storage (one SQLAlchemy engine) per URL, shared by every Sweep."""
    import optuna

    with _STORAGES_LOCK:
        if url not in _STORAGES:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                kwargs = {"connect_args": {"timeout": 60}}
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        return _STORAGES[url]


class SweepCache:
    """What one Sweep's reconciles keep while its generation stays: the Sweep parsed (or why
    it is invalid; parsing validates the template with sampled values of every parameter)
    and its study with its sampler (a grid sampler holds the whole grid)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._parsed: Sweep | ManifestError | None = None
        self._study: optuna.Study | None = None

    def parse(self, body: dict[str, Any]) -> Sweep:
        """`parse_sweep(body)`, redone only when what it reads changes."""
        meta = body["metadata"]
        key = (
            meta.get("uid"),
            meta.get("generation"),
            tuple(sorted((meta.get("labels") or {}).items())),
        )
        if key != self._key:
            self._key, self._study = key, None
            try:
                self._parsed = parse_sweep(body)
            except ManifestError as exc:
                self._parsed = exc
        if isinstance(self._parsed, ManifestError):
            raise self._parsed.with_traceback(None)  # no traceback piling up per reconcile
        assert self._parsed is not None
        return self._parsed

    def study(self, load: Callable[[], optuna.Study]) -> optuna.Study:
        """The study of the Sweep last parsed, loaded once."""
        if self._study is None:
            self._study = load()
        return self._study


def parse_sweep(body: dict[str, Any]) -> Sweep:
    """The Sweep as the models read it; ManifestError names each invalid field (the CRD keeps
    the template's spec free-form, so the apiserver could not check it)."""
    meta = body["metadata"]
    doc = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta},
        "spec": body.get("spec"),
    }
    sweep = parse_resource(doc, source="invalid Sweep")
    assert isinstance(sweep, Sweep)
    return sweep


def reconcile_sweep(
    body: dict[str, Any],
    kube: Kube,
    settings: OperatorSettings,
    metrics: TrialMetrics,
    last: SweepStatus | None = None,
    now: dt.datetime | None = None,
    cache: SweepCache | None = None,
) -> SweepStatus:
    """Converge one Sweep; returns the status it wrote (or found current). `last` is the
    status this operator wrote before (the watched body may not show it yet); `cache` what
    the Sweep's earlier reconciles parsed and loaded."""
    now = now or dt.datetime.now(dt.UTC)
    cache = cache or SweepCache()
    before = last or SweepStatus.model_validate(body.get("status") or {})
    status = before.model_copy(deep=True)
    generation = int(body["metadata"].get("generation") or 0)
    try:
        sweep = cache.parse(body)
    except ManifestError as exc:
        events = invalid_status(status, "; ".join(exc.problems), now, generation)
    else:
        events = _SweepReconcile(body, sweep, kube, settings, metrics, now, cache).run(status)
    if status != before:
        _patch_status(kube, body, status)
    for kind, reason, message in events:  # after the status: it is the record
        kube.event(body, kind, reason, message)
    return status


def _patch_status(kube: Kube, body: dict[str, Any], status: SweepStatus) -> None:
    meta = body["metadata"]
    patch = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
    try:
        kube.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], Sweep.plural, meta["name"], patch
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile
            raise


class _SweepReconcile:
    """The trials of one Sweep, for one reconcile."""

    def __init__(
        self,
        body: dict[str, Any],
        sweep: Sweep,
        kube: Kube,
        settings: OperatorSettings,
        metrics: TrialMetrics,
        now: dt.datetime,
        cache: SweepCache,
    ) -> None:
        from tradewind.sweeps import study as sw

        self.sw = sw
        self.body, self.spec, self.kube, self.metrics, self.now = (
            body,
            sweep.spec,
            kube,
            metrics,
            now,
        )
        meta = body["metadata"]
        self.name, self.ns, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.kind = self.spec.template.kind
        self.plural = KINDS[self.kind].plural
        self.study_name = study_name(self.ns, self.name, self.uid)
        self.study = cache.study(
            lambda: sw.create_or_load(self.spec, self.study_name, storage(settings.optuna_storage))
        )
        self.events: Events = []
        self.deleted: set[str] = set()
        self.parent_run_id: str | None = None

    def run(self, status: SweepStatus) -> Events:
        was = status.phase
        if was in TERMINAL:  # as a run's: raising maxTrials afterwards starts nothing
            return []
        self.parent_run_id = self._sweep_run(status)
        children = self._children()
        for trial in self._running():
            self._account(trial, children.get(trial.number))
        finished = {
            t.number for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()
        }
        for child in children.values():
            if child.active and child.number in finished:  # e.g. pruned, then the operator died
                self._delete(child.name)
        start = status.start_time or self._first_start()
        tally = self._tally(start)
        stopped = 0
        if tally.too_many_failures:
            stopped = self._stop_running(children)
        else:
            for _ in range(trials_to_start(self.spec, tally)):
                self._launch()
            tally = self._tally(start)
        status.study_name = self.study_name
        if start is None and tally.launched:
            start = self.now  # the first trials started in this reconcile
        status.start_time = start
        result = outcome(tally, self._fill(status, children))
        if stopped:
            message = f"{result.message}; {stopped} running trial(s) stopped"
            result = Outcome(result.phase, result.reason, message)
        generation = int(self.body["metadata"].get("generation") or 0)
        events = apply_outcome(status, result, self.now, generation)
        if status.phase in TERMINAL and status.mlflow.run_id:
            self.metrics.finish_sweep_run(
                status.mlflow.run_id, status.phase == "Failed", self._result_metrics(status)
            )
        return self.events + events

    def _sweep_run(self, status: SweepStatus) -> str | None:
        """The Sweep's MLflow run, into the status (the trials' runs nest under it)."""
        if status.mlflow.run_id:
            return status.mlflow.run_id
        info = self.metrics.sweep_run(self._experiment(), self.name, self.ns, self.study_name)
        if info is None:
            return None
        status.mlflow.run_id = run_id = str(info["run_id"])
        status.mlflow.url = (
            f"{self.metrics.uri}/#/experiments/{info['experiment_id']}/runs/{run_id}"
        )
        return run_id

    def _result_metrics(self, status: SweepStatus) -> dict[str, float]:
        """Trial counts, the best trial's objective and its Sharpe significance (best_sharpe,
        best_psr, best_deflated_sharpe, sharpe_trials, ...) for the sweep's MLflow run."""
        counts = status.trials
        out = {"trials_completed": float(counts.completed), "trials_pruned": float(counts.pruned),
               "trials_failed": float(counts.failed)}  # fmt: skip
        if status.best_trial is not None and self.spec.objective is not None:
            out[f"best_{self.spec.objective.metric}"] = status.best_trial.values[0]
            out["best_trial"] = float(status.best_trial.number)
        return out | self.sw.significance_metrics(status.best_trial)

    # --- observing ---------------------------------------------------------------------

    def _children(self) -> dict[int, Child]:
        listed: Any = self.kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, self.plural, label_selector=f"{SWEEP_LABEL}={self.name}"
        )
        children = (observe_child(item, self.uid) for item in listed.get("items") or [])
        return {c.number: c for c in children if c is not None}

    def _running(self) -> list[FrozenTrial]:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def _first_start(self) -> dt.datetime | None:
        starts = [t.datetime_start for t in self.study.get_trials(deepcopy=False)]
        first = min((s for s in starts if s is not None), default=None)
        return first.astimezone(dt.UTC) if first is not None else None

    def _tally(self, start: dt.datetime | None) -> Tally:
        return Tally(
            budget=self.sw.trial_budget(self.spec),
            launched=self.sw.launched(self.study),
            running=len(self._running()),
            failed=self.sw.failed(self.study),
            max_failed=self.spec.max_failed_trials,
            timed_out=timed_out(self.spec, start, self.now),
        )

    def _fill(self, status: SweepStatus, children: dict[int, Child]) -> TrialCounts:
        """Counts, best trial / value and Pareto front into the status. Trials whose child
        runs count as running; the others not yet finished as pending."""
        names = {
            t.number: child_name(self.name, t.number) for t in self.study.get_trials(deepcopy=False)
        }
        counts, best, best_value, front = self.sw.summarise(self.study, self.spec, names)
        running = [t.number for t in self._running()]
        started = sum(1 for n in running if n in children and children[n].phase in RUNNING_CHILD)
        counts.pending += counts.running - started
        counts.running = started
        status.trials, status.best_trial, status.best_value = counts, best, best_value
        status.pareto_front = front
        return counts

    # --- acting --------------------------------------------------------------------------

    def _account(self, trial: FrozenTrial, child: Child | None) -> None:
        """A Running trial: give it its child, or tell how its child ended, or prune it."""
        if child is None:
            self._create(trial.number, self.sw.decode_params(self.spec, trial.params))
        elif child.deleting:
            return  # someone deletes it: once gone, the trial gets a new child
        elif child.phase == "Succeeded":
            self._tell_final(trial, child)
        elif child.phase == "Failed":
            self._fail(trial, f"{child.name} failed: {child.message}".rstrip(": "))
        else:
            self._maybe_prune(trial, child)

    def _create(self, number: int, params: dict[str, Any]) -> None:
        manifest = build_child(
            self.body, self.spec, number, params, self.study_name, self.parent_run_id
        )
        name = manifest["metadata"]["name"]
        try:
            self.kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, self.plural, manifest, field_manager=MANAGER
            )
        except ApiException as exc:
            if exc.status == 409:
                self._exists(number, name)
                return
            if exc.status != 422:
                raise
            self._fail_number(number, f"the apiserver rejected {name}: {exc.body or exc.reason}")
            return
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self.events.append(("Normal", "TrialCreated", f"trial {number}: {name} with {shown}"))
        log.info("sweep %s/%s: created %s %s", self.ns, self.name, self.kind, name)

    def _exists(self, number: int, name: str) -> None:
        """Creating trial `number`'s child found the name taken: ours (made just before a
        restart) is fine, another object's fails the trial rather than holding its slot."""
        try:
            found: Any = self.kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, self.plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # ours, deleted since: created again on the next pass
            raise
        if observe_child(found, self.uid) is None:
            self._fail_number(number, f"{self.kind} {name} exists and is not this Sweep's")

    def _launch(self) -> None:
        trial, params = self.sw.ask(self.study, self.spec)
        self._create(trial.number, params)

    def _tell_final(self, trial: FrozenTrial, child: Child) -> None:
        try:
            final = self.metrics.final_metrics(self._experiment(), child.name, self.ns, child.uid)
        except (OSError, KeyError, ValueError) as exc:  # told on a later reconcile
            log.info("trial %d of %s/%s not told yet: %s", trial.number, self.ns, self.name, exc)
            return
        run = self.metrics.latest(self._experiment(), child.name, self.ns, child.uid)
        self._report(trial, run)  # the whole curve, for the pruner's view of finished trials
        metrics = dict(child.metrics) | final
        values = self.sw.objective_values(self.spec, metrics)
        if values is None:
            wanted = ", ".join(o.metric for o in self._objectives())
            self._fail(trial, f"{child.name} succeeded without a finite {wanted} in MLflow")
            return
        self.sw.tell(self.study, self.spec, trial.number, metrics)
        shown = ", ".join(
            f"{o.metric}={v:.6g}" for o, v in zip(self._objectives(), values, strict=True)
        )
        self.events.append(("Normal", "TrialCompleted", f"trial {trial.number}: {shown}"))

    def _fail(self, trial: FrozenTrial, reason: str) -> None:
        self._fail_number(trial.number, reason)

    def _fail_number(self, number: int, reason: str) -> None:
        self._live(number).set_user_attr(REASON_ATTR, reason[:1000])
        self.sw.tell(self.study, self.spec, number, None)
        self.events.append(("Warning", "TrialFailed", f"trial {number}: {reason}"))

    def _report(self, trial: FrozenTrial, run: dict[str, Any] | None) -> tuple[bool, list[float]]:
        """Report the child's intermediate values not reported yet; whether the pruner stops
        the trial, and the values. The pruner's steps count the values (epochs, or
        evaluations of an RLRun that logs them at its timestep), from 1, as a local sweep's
        do: minResource is in those units."""
        metric = self.sw.intermediate_metric(self.spec)
        if metric is None or self.spec.pruner.type == "none" or run is None:
            return False, []
        history = self.metrics.history(run["info"]["run_id"], metric)
        values = [history[s] for s in sorted(history)]
        done = len(trial.intermediate_values)
        verdicts = [
            self.sw.report(self.study, trial.number, step, values[step - 1])
            for step in range(done + 1, len(values) + 1)
        ]
        if not verdicts and done:  # other trials moved on since: ask again
            verdicts.append(self._live(trial.number).should_prune())
        return any(verdicts), values

    def _maybe_prune(self, trial: FrozenTrial, child: Child) -> None:
        metric = self.sw.intermediate_metric(self.spec)
        if metric is None or self.spec.pruner.type == "none":
            return
        run = self.metrics.latest(self._experiment(), child.name, self.ns, child.uid)
        prune, values = self._report(trial, run)
        if not prune:
            return
        self.sw.prune(self.study, trial.number)  # told first: a kill before the delete
        self._delete(child.name)  # leaves a child to clean up
        shown = f" ({metric}={values[-1]:.6g})" if values else ""
        message = f"trial {trial.number}: {child.name} pruned at step {len(values)}{shown}"
        self.events.append(("Normal", "TrialPruned", message))

    def _stop_running(self, children: dict[int, Child]) -> int:
        """maxFailedTrials exceeded: stop the trials still running (told Fail)."""
        running = self._running()
        for trial in running:
            self._live(trial.number).set_user_attr(REASON_ATTR, "stopped: the sweep failed")
            self.sw.tell(self.study, self.spec, trial.number, None)
            if trial.number in children:
                self._delete(children[trial.number].name)
        return len(running)

    # --- helpers -------------------------------------------------------------------------

    def _delete(self, name: str) -> None:
        if name not in self.deleted:
            self.deleted.add(name)
            self.kube.delete(self.kind, self.ns, name)

    def _live(self, number: int) -> optuna.trial.Trial:
        import optuna

        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, number
        )
        return optuna.trial.Trial(self.study, trial_id)

    def _experiment(self) -> str:
        return self.spec.template.spec.tracking.experiment

    def _objectives(self) -> list[Any]:
        return [self.spec.objective] if self.spec.objective else list(self.spec.objectives or [])
