"""`tradewind run -f sweep.yaml`: a Sweep on this machine. Each trial is a local process
(`python -m tradewind.trainer`, or `tradewind.trainer.rl` per agent then `--combine`) running
the template with the trial's parameters, `parallelism` at a time. The trials' per-epoch
(per-evaluation) objective is read from MLflow as they log it and reported to the pruner;
a pruned trial's process is stopped. State lives under STATE_DIR/sweeps/NAME: the Optuna
study (optuna.db: re-running continues it), the trial manifests and logs, and the manifest
that re-runs the best trial.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tradewind.api import ManifestError, Sweep, dump_resource
from tradewind.api.identity import PARENT_RUN_ANNOTATION, SWEEP_LABEL, TRIAL_LABEL
from tradewind.api.manifest import parse_resource
from tradewind.api.status import SharpeSummary, TrialSummary
from tradewind.significance import SharpeStats
from tradewind.sweeps import study as sw

POLL_SECONDS = 1.0
PARENT_RUN_ATTR = "tradewind.mlflow_parent_run_id"
STEPS_RUN_ATTR = "tradewind.steps_run"
"""Trial user attribute: epochs (evaluations) the trial's run logged, pruned or not."""
STATE_NAMES = {
    TrialState.WAITING: "Pending",
    TrialState.RUNNING: "Running",
    TrialState.COMPLETE: "Complete",
    TrialState.PRUNED: "Pruned",
    TrialState.FAIL: "Failed",
}


@dataclass
class _Trial:
    trial: optuna.trial.Trial
    name: str
    params: dict[str, Any]
    commands: list[list[str]]
    log: IO[bytes]
    proc: subprocess.Popen[bytes] | None = None
    run_ids: list[str] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    reported: int = 0
    pruned: bool = False


@dataclass
class SweepOutcome:
    """What `run_sweep` ends with (the bench reads it)."""

    study: optuna.Study
    folder: Path
    succeeded: bool
    best_value: float | None
    best_params: dict[str, Any] | None
    pareto_front: list[dict[str, Any]]
    steps_run: int
    """Epochs (evaluations) all the study's trials logged: the compute the sweep spent."""
    seconds: float
    best_sharpe: SharpeStats | None = None
    """The best trial's Sharpe statistics (single objective; None when it logged none)."""
    deflated_sharpe: float | None = None
    """The best trial's Deflated Sharpe Ratio over the trials tried (`sw.tried`)."""


class _Tracking:
    """The sweep's parent MLflow run and its trials' nested runs (tag mlflow.parentRunId)."""

    def __init__(self, uri: str, experiment: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:"):  # artifacts beside the store, as the trainer does
                root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment
                location = root.resolve().as_uri()
            self.experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.client = MlflowClient(uri)
        self.parent_id = ""

    def start_parent(self, sweep: Sweep, run_id: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
        except MlflowException:  # the MLflow store was reset since
            run_id = None
        if run_id is None:
            spec = sweep.spec
            tags = {"tradewind.kind": "Sweep", "tradewind.name": sweep.metadata.name}
            run = self.client.create_run(
                self.experiment_id, tags=tags, run_name=sweep.metadata.name
            )
            run_id = run.info.run_id
            params = {f"searchSpace.{k}": v.model_dump_json(exclude_none=True)
                      for k, v in spec.search_space.items()}  # fmt: skip
            params |= {"sampler": spec.sampler, "pruner": spec.pruner.type,
                       "maxTrials": str(spec.max_trials), "seed": str(spec.seed)}  # fmt: skip
            from mlflow.entities import Param

            # MLflow keys allow no brackets (`agents[ppo].hyperparameters.gamma`).
            batch = [
                Param(re.sub(r"[^\w\-. :/]", "_", k)[:250], v[:6000]) for k, v in params.items()
            ]
            self.client.log_batch(run_id, params=batch)
        self.parent_id = run_id
        return run_id

    def trial_runs(self, name: str) -> list[str]:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`tradewind.name` = '{name}' and "
            f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            order_by=["attributes.start_time ASC"],
        )
        return [r.info.run_id for r in runs]

    def history(self, run_ids: list[str], metric: str) -> list[float]:
        values: list[float] = []
        for run_id in run_ids:
            points = self.client.get_metric_history(run_id, metric)
            values += [p.value for p in sorted(points, key=lambda p: (p.step, p.timestamp))]
        return values

    def final_metrics(self, run_ids: list[str]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for run_id in run_ids:  # in start order: the combine run of an RLRun comes last
            metrics |= self.client.get_run(run_id).data.metrics
        return metrics

    def killed(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")

    def finish_parent(
        self,
        best_value: float | None,
        best: dict[str, Any] | None,
        ok: bool,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """End the parent run with the best value, trial and `metrics` (its significance)."""
        if best_value is not None:
            self.client.log_metric(self.parent_id, "best_value", best_value)
        for key, value in (metrics or {}).items():
            self.client.log_metric(self.parent_id, key, value)
        if best is not None:
            self.client.set_tag(self.parent_id, "tradewind.best_trial", best["name"])
        self.client.set_terminated(self.parent_id, "FINISHED" if ok else "FAILED")


class LocalSweep:
    def __init__(self, sweep: Sweep, state_dir: Path, console: Console) -> None:
        self.sweep = sweep
        self.spec = sweep.spec
        self.state_dir = state_dir.resolve()
        self.console = console
        self.folder = self.state_dir / "sweeps" / sweep.metadata.name
        (self.folder / "trials").mkdir(parents=True, exist_ok=True)
        self.study = sw.create_or_load(
            self.spec, sweep.metadata.name, f"sqlite:///{self.folder / 'optuna.db'}"
        )
        self.active: dict[int, _Trial] = {}
        self.first_start: dt.datetime | None = None
        self.metric = sw.intermediate_metric(self.spec)
        self.tracking_uri = _tracking_uri(self.state_dir)
        self.tracking = _Tracking(self.tracking_uri, self.spec.template.spec.tracking.experiment)

    def trial_name(self, number: int) -> str:
        return f"{self.sweep.metadata.name}-{number}"

    def run(self) -> SweepOutcome:
        started = time.monotonic()
        parent = self.tracking.start_parent(self.sweep, self.study.user_attrs.get(PARENT_RUN_ATTR))
        self.study.set_user_attr(PARENT_RUN_ATTR, parent)
        requeued = sw.requeue_running(self.study)
        for number in requeued:
            self.tracking.killed(self.tracking.trial_runs(self.trial_name(number)))
        if requeued:
            self.console.print(
                f"re-queued trials left running: {requeued}", highlight=False, markup=False
            )
        failed_sweep = False
        try:
            with Live(self._table(), console=self.console, refresh_per_second=2) as live:
                while True:
                    self._poll()
                    failed_sweep = sw.failed(self.study) > self.spec.max_failed_trials
                    stopping = failed_sweep or self._past_timeout()
                    while (
                        not stopping
                        and len(self.active) < self.spec.parallelism
                        and sw.launched(self.study) < sw.trial_budget(self.spec)
                    ):
                        self._launch()
                    live.update(self._table())
                    if not self.active and (
                        stopping or sw.launched(self.study) >= sw.trial_budget(self.spec)
                    ):
                        break
                    time.sleep(POLL_SECONDS)
        except BaseException:
            self._stop_all()
            raise
        return self._finish(not failed_sweep, time.monotonic() - started)

    def _past_timeout(self) -> bool:
        """timeoutSeconds counts from the sweep's first trial, across resumes (as in cluster)."""
        timeout = self.spec.timeout_seconds
        if timeout is None:
            return False
        if self.first_start is None:
            starts = [t.datetime_start for t in self.study.get_trials(deepcopy=False)]
            self.first_start = min((s for s in starts if s is not None), default=None)
        return self.first_start is not None and (
            dt.datetime.now() - self.first_start > dt.timedelta(seconds=timeout)
        )

    # --- trials ------------------------------------------------------------------------

    def _launch(self) -> None:
        trial, params = sw.ask(self.study, self.spec)
        name = self.trial_name(trial.number)
        try:
            manifest = self._write_manifest(name, trial.number, params)
        except ManifestError as exc:  # e.g. a combination that breaks a cross-field rule
            self.console.print(f"trial {trial.number}: {exc}", highlight=False, markup=False)
            sw.tell(self.study, self.spec, trial.number, None)
            return
        shutil.rmtree(self.state_dir / "checkpoints" / name, ignore_errors=True)  # a stale one
        base = [sys.executable, "-m"]
        args = ["--config", str(manifest), "--state-dir", str(self.state_dir)]
        if self.spec.template.kind == "TrainingRun":
            commands = [[*base, "tradewind.trainer", *args]]
            if self.spec.template.spec.entrypoint is not None:  # the template's own code
                from tradewind.api import TrainingRun, load_resources
                from tradewind.trainer.own_code import local_argv

                (trial_run,) = load_resources(manifest)
                assert isinstance(trial_run, TrainingRun)
                commands = [local_argv(trial_run, manifest, self.state_dir)]
        else:
            agents = len(self.spec.template.spec.agents)
            commands = [[*base, "tradewind.trainer.rl", *args, "--agent-index", str(i)]
                        for i in range(agents)]  # fmt: skip
            commands.append([*base, "tradewind.trainer.rl", *args, "--combine"])
        log = (self.folder / "trials" / f"{name}.log").open("ab")
        t = _Trial(trial, name, params, commands, log)
        self._next_command(t)
        self.active[trial.number] = t

    def _write_manifest(self, name: str, number: int, params: dict[str, Any]) -> Path:
        spec = self.spec.trial_spec(params)
        storage = spec.get("checkpoint", {}).get("storage")
        if storage:  # one prefix per trial, never the template's shared one
            spec["checkpoint"]["storage"] = f"{storage.rstrip('/')}/{name}"
        metadata = {  # the trainer tags the trial's MLflow run from these (api/identity.py)
            "name": name,
            "labels": {SWEEP_LABEL: self.sweep.metadata.name, TRIAL_LABEL: str(number)},
            "annotations": {PARENT_RUN_ANNOTATION: self.tracking.parent_id},
        }
        doc = {"apiVersion": self.sweep.api_version, "kind": self.spec.template.kind,
               "metadata": metadata, "spec": spec}  # fmt: skip
        run = parse_resource(doc, name)
        path = self.folder / "trials" / f"{name}.yaml"
        path.write_text(dump_resource(run))
        return path

    def _next_command(self, t: _Trial) -> None:
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | dict(os.environ)
        env |= {"MLFLOW_TRACKING_URI": self.tracking_uri, "PYTHONUNBUFFERED": "1"}
        t.proc = subprocess.Popen(
            t.commands.pop(0), stdout=t.log, stderr=subprocess.STDOUT, env=env
        )

    def _poll(self) -> None:
        for t in list(self.active.values()):
            code = t.proc.poll() if t.proc is not None else None
            self._read_progress(t, prune=code is None)
            if t.pruned:
                self._end(t, "pruned", TrialState.PRUNED)
            elif code is not None and code != 0:
                self._end(t, f"failed (exit {code})", TrialState.FAIL)
            elif code == 0 and t.commands:
                self._next_command(t)
            elif code == 0:
                self._end(t, "", TrialState.COMPLETE, self.tracking.final_metrics(t.run_ids))

    def _read_progress(self, t: _Trial, prune: bool) -> None:
        if not t.run_ids or t.commands or t.proc is None or t.proc.poll() is not None:
            t.run_ids = self.tracking.trial_runs(t.name)
        if self.metric is None or not t.run_ids:
            return
        t.history = self.tracking.history(t.run_ids, self.metric)
        while t.reported < len(t.history) and not t.pruned:
            step = t.reported + 1
            stop = sw.report(self.study, t.trial.number, step, t.history[t.reported])
            t.reported = step
            # A run that already ended is told as it ended, whatever the pruner says now.
            t.pruned = stop and prune

    def _end(
        self, t: _Trial, how: str, state: TrialState, metrics: dict[str, float] | None = None
    ) -> None:
        if t.proc is not None and t.proc.poll() is None:
            _stop(t.proc)
            self.tracking.killed(t.run_ids)
        t.trial.set_user_attr(STEPS_RUN_ATTR, len(t.history))
        if state == TrialState.PRUNED:
            sw.prune(self.study, t.trial.number)
        else:  # without metrics (a failed run) the trial is told Fail
            sw.tell(self.study, self.spec, t.trial.number, metrics)
        t.log.close()
        del self.active[t.trial.number]
        frozen = self.study.trials[t.trial.number]
        value = f" {frozen.values}" if frozen.values else ""
        steps = f" after {len(t.history)} steps" if self.metric else ""
        label = how or STATE_NAMES[frozen.state].lower()
        if frozen.state == TrialState.FAIL:
            missing = "" if how else ": an objective metric was not logged"
            value = f"{missing}; log: {self.folder / 'trials' / t.name}.log"
        self.console.print(
            f"trial {t.trial.number} {label}{steps}{value}", highlight=False, markup=False
        )

    def _stop_all(self) -> None:
        for t in self.active.values():  # the study keeps them Running: re-queued on re-run
            if t.proc is not None and t.proc.poll() is None:
                _stop(t.proc)
            t.log.close()

    # --- output ------------------------------------------------------------------------

    def _table(self) -> Group:
        counts, best, best_value, _ = sw.summarise(self.study, self.spec, {})
        head = (
            f"[bold]{self.sweep.metadata.name}[/]: {sw.launched(self.study)}/"
            f"{sw.trial_budget(self.spec)} trials  running {counts.running}  complete "
            f"{counts.completed}  pruned {counts.pruned}  failed {counts.failed}"
        )
        if best is not None:
            head += f"  best {best_value:.5g} (trial {best.number})"
        table = Table(show_edge=False)
        table.add_column("trial", justify="right")
        for path in self.spec.search_space:
            table.add_column(path.rsplit(".", 1)[-1], justify="right")
        table.add_column("step", justify="right")
        table.add_column("value", justify="right")
        table.add_column("state")
        skip = sw.interrupted(self.study)
        for trial in self.study.get_trials(deepcopy=False)[-30:]:
            if trial.number in skip:
                continue
            params = sw.decode_params(self.spec, trial.params)
            live = self.active.get(trial.number)
            steps = len(live.history) if live else trial.user_attrs.get(STEPS_RUN_ATTR, 0)
            if trial.values:
                value = ", ".join(f"{v:.5g}" for v in trial.values)
            elif live and live.history:
                value = f"{live.history[-1]:.5g}"
            elif trial.intermediate_values:
                value = f"{trial.intermediate_values[max(trial.intermediate_values)]:.5g}"
            else:
                value = ""
            table.add_row(
                str(trial.number),
                *(Text(_short(params.get(p))) for p in self.spec.search_space),
                str(steps) if self.metric else "",
                value,
                STATE_NAMES[trial.state],
            )
        return Group(head, table)

    def _finish(self, ok: bool, seconds: float) -> SweepOutcome:
        names = {t.number: self.trial_name(t.number) for t in self.study.get_trials()}
        counts, best, best_value, front = sw.summarise(self.study, self.spec, names)
        best_dict = best.model_dump() if best is not None else None
        self.tracking.finish_parent(best_value, best_dict, ok, sw.significance_metrics(best))
        out = self.console.print
        out()  # the live table's last line has no newline of its own
        if not counts.completed:
            out("no trial completed", highlight=False)
        if not ok:
            out(f"[red]sweep failed:[/] {counts.failed} failed trials (maxFailedTrials "
                f"{self.spec.max_failed_trials}); see {self.folder / 'trials'}/*.log")  # fmt: skip
        if best is not None:
            out(f"best trial {best.number} ({best.name}): {self._objective_text(best.values)}")
            for key, value in best.params.items():
                out(f"  {key}: {value}", highlight=False, markup=False)
            out(sharpe_text(best.sharpe, sw.sharpe_prefix(self.spec)), highlight=False)
            rerun = self._rerun_manifest("best", best.params)
            out(f"re-run it: tradewind run -f {rerun}", markup=False, soft_wrap=True)
        if front:
            table = Table(title="Pareto front")
            table.add_column("trial", justify="right")
            for o in self.spec.objectives or []:
                table.add_column(f"{o.metric} ({o.direction[:3]})", justify="right")
            table.add_column("Sharpe [95% CI]", justify="right")
            table.add_column("deflated Sharpe", justify="right")
            for t in front:
                table.add_row(str(t.number), *(f"{v:.5g}" for v in t.values), *_sharpe_cells(t))
            out(table)
            for t in front:
                rerun = self._rerun_manifest(f"trial-{t.number}", t.params)
                out(
                    f"re-run trial {t.number}: tradewind run -f {rerun}",
                    markup=False,
                    soft_wrap=True,
                )
        out(f"MLflow: parent run {self.tracking.parent_id}; browse with: mlflow ui "
            f"--backend-store-uri {self.tracking_uri}", highlight=False, markup=False)  # fmt: skip
        steps = sum(int(t.user_attrs.get(STEPS_RUN_ATTR, 0)) for t in self.study.trials)
        return SweepOutcome(
            study=self.study,
            folder=self.folder,
            succeeded=ok,
            best_value=best_value,
            best_params=best.params if best is not None else None,
            pareto_front=[t.model_dump() for t in front],
            steps_run=steps,
            seconds=seconds,
            best_sharpe=sw.stored_sharpe(self.study.best_trial) if best is not None else None,
            deflated_sharpe=best.sharpe.deflated if best is not None and best.sharpe else None,
        )

    def _objective_text(self, values: list[float]) -> str:
        metrics = [o.metric for o in ([self.spec.objective] if self.spec.objective else [])]
        return ", ".join(f"{m} {v:.5g}" for m, v in zip(metrics, values, strict=False))

    def _rerun_manifest(self, label: str, params: dict[str, Any]) -> Path:
        """A manifest for `tradewind run -f`: the template with these parameters, named apart
        from the trial so it trains afresh rather than resuming the trial's checkpoints."""
        name = f"{self.sweep.metadata.name}-{label}"
        doc = {"apiVersion": self.sweep.api_version, "kind": self.spec.template.kind,
               "metadata": {"name": name}, "spec": self.spec.trial_spec(params)}  # fmt: skip
        path = self.folder / f"{label}.yaml"
        path.write_text(dump_resource(parse_resource(doc, name)))
        return path


def run_sweep(sweep: Sweep, state_dir: Path, console: Console) -> SweepOutcome:
    """Run (or continue) the sweep here until maxTrials, maxFailedTrials or timeoutSeconds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    local = LocalSweep(sweep, state_dir, console)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the trials' processes are stopped with the sweep

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return local.run()
    except KeyboardInterrupt:
        console.print(f"interrupted; re-run to continue the study in {local.folder}", markup=False)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def sharpe_text(sharpe: SharpeSummary | None, prefix: str) -> str:
    """One line on a trial's Sharpe ratio and how far to believe it, for the summary."""
    if sharpe is None:
        return f"deflated Sharpe: n/a (the trial logged no {prefix}_sharpe with its statistics)"
    return (
        f"{prefix} Sharpe {sharpe.value:.3g} (95% CI {sharpe.ci_low:.3g} to {sharpe.ci_high:.3g}, "
        f"{sharpe.periods} periods), PSR {sharpe.psr:.3f}, deflated Sharpe "
        f"{sharpe.deflated:.3f} over {sharpe.trials} trials tried"
    )


def _sharpe_cells(trial: TrialSummary) -> tuple[str, str]:
    s = trial.sharpe
    if s is None:
        return "", ""
    return f"{s.value:.3g} [{s.ci_low:.3g}, {s.ci_high:.3g}]", f"{s.deflated:.3f}"


def _tracking_uri(state_dir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(state_dir / 'mlflow.db').resolve()}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."
