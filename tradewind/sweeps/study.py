"""The Optuna study behind a Sweep, driven by ask and tell (no `study.optimize`): the caller
starts each trial's run, reports its per-epoch metric, prunes or tells the final metrics.

    study = create_or_load(spec, "ns.sweep-name", "sqlite:///optuna.db")
    trial, params = ask(study, spec)          # params keyed by searchSpace path
    run_spec = spec.trial_spec(params)        # ... start the run ...
    if report(study, trial.number, epoch, metrics[intermediate_metric(spec)]):
        prune(study, trial.number)            # ... stop the run ...
    tell(study, spec, trial.number, final_metrics)   # Complete, or Fail without the metrics
    counts, best, best_value, pareto = summarise(study, spec, {trial.number: "run-name"})
    best.sharpe.deflated                      # its Deflated Sharpe Ratio, given the trials tried

Trials left Running by a sweep that died with them are re-queued (`requeue_running`): the
old trial is marked Fail and "interrupted", which neither counts towards maxTrials nor
maxFailedTrials, and a Waiting trial with the same parameters takes its place.

A trial's Sharpe ratio is the `SharpeStats` its run logged on its test split (`sharpe_prefix`:
`backtest_*` of a TrainingRun, its agent's of an RLRun), kept on the trial when it is told;
the objective is never a test figure (`SweepSpec` refuses them). The best trial (by the
objective; each member of a Pareto front) gets its Deflated Sharpe Ratio over the trials
tried (`tried`): completed, pruned, and failed after reporting a value; those without a
Sharpe count as tried but add nothing to the Sharpe ratios' spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tradewind.api.status import SharpeSummary, TrialCounts, TrialSummary
from tradewind.api.sweep import Parameter, RLRunTemplate, SweepSpec
from tradewind.significance import SharpeStats, deflated_sharpe_ratio

INTERRUPTED_ATTR = "tradewind.interrupted"
"""Study user attribute: numbers of the trials re-queued after their sweep died."""

SHARPE_ATTR = "tradewind.sharpe"
"""Trial user attribute: its run's Sharpe statistics, as `SharpeStats.as_metrics()`."""

_PRIMITIVE = (type(None), bool, int, float, str)


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. `seed_offset` (the trials already in a resumed study) keeps a
    reloaded seeded sampler from proposing the first trials' parameters again."""
    seed = spec.seed + seed_offset
    match spec.sampler:
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "grid":
            grid = {path: list(_choices(p)) for path, p in spec.search_space.items()}
            return _GridSampler(grid, seed=seed)
        case "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        case "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        case _:
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; steps are epochs (TrainingRun) or evaluations (RLRun)."""
    p = spec.pruner
    match p.type:
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=p.min_resource, reduction_factor=p.reduction_factor
            )
        case "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=p.min_resource,
                max_resource=p.max_resource or "auto",
                reduction_factor=p.reduction_factor,
            )
        case "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps
            )
        case _:
            return optuna.pruners.NopPruner()


def directions(spec: SweepSpec) -> list[StudyDirection]:
    return [StudyDirection[o.direction.upper()] for o in _objectives(spec)]


def create_or_load(
    spec: SweepSpec, study_name: str, storage: str | optuna.storages.BaseStorage
) -> optuna.Study:
    """The study named `study_name` in `storage`, created on first use."""
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=directions(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    study.sampler = make_sampler(spec, seed_offset=len(study.get_trials(deepcopy=False)))
    return study


def distribution(param: Parameter) -> BaseDistribution:
    """The Optuna distribution of one searchSpace entry."""
    if param.type in ("choice", "grid"):
        return CategoricalDistribution(_choices(param))
    assert param.low is not None and param.high is not None  # the spec guarantees both
    if param.type == "int":
        return IntDistribution(
            int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
        )
    return FloatDistribution(param.low, param.high, log=param.type == "loguniform", step=param.step)


def ask(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.trial.Trial, dict[str, Any]]:
    """A new trial (or a Waiting one, e.g. re-queued) and its parameters by searchSpace path,
    ready for `spec.trial_spec`."""
    distributions = {path: distribution(p) for path, p in spec.search_space.items()}
    trial = study.ask(distributions)
    return trial, decode_params(spec, trial.params)


def decode_params(spec: SweepSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's parameter values -> the values to put in the spec (choices that are lists or
    objects travel through Optuna as JSON strings)."""
    out: dict[str, Any] = {}
    for path, value in params.items():
        param = spec.search_space.get(path)
        out[path] = json.loads(value) if param is not None and _encoded(param) else value
    return out


def intermediate_metric(spec: SweepSpec) -> str | None:
    """The metric reported per epoch/evaluation to the pruner (single objective only)."""
    return spec.objective.metric if spec.objective is not None else None


def objective_values(spec: SweepSpec, metrics: Mapping[str, float]) -> list[float] | None:
    """The objectives' values from a run's final metrics; None when one is missing or not
    finite (the trial failed)."""
    values: list[float] = []
    for objective in _objectives(spec):
        value = metrics.get(objective.metric)
        if value is None or not math.isfinite(float(value)):
            return None
        values.append(float(value))
    return values


def report(study: optuna.Study, number: int, step: int, value: float) -> bool:
    """Report trial `number`'s intermediate value at `step`; True when the pruner stops it."""
    trial = _live_trial(study, number)
    if math.isfinite(value):
        trial.report(value, step)
    return trial.should_prune()


def prune(study: optuna.Study, number: int) -> None:
    study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)


def tell(
    study: optuna.Study, spec: SweepSpec, number: int, metrics: Mapping[str, float] | None
) -> TrialState:
    """Finish trial `number` from its run's final metrics: Complete, or Fail when the run
    failed (`metrics` None) or did not log every objective."""
    values = objective_values(spec, metrics) if metrics is not None else None
    stats = trial_sharpe(spec, metrics) if metrics is not None else None
    if stats is not None:
        _record_sharpe(study, number, stats)
    if values is None:
        frozen = study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    else:
        frozen = study.tell(number, values, skip_if_finished=True)
    return frozen.state


def requeue_running(study: optuna.Study) -> list[int]:
    """Trials left Running (their runs are gone): mark them interrupted and Fail, and queue
    their parameters again. Returns the interrupted trials' numbers."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    numbers = [t.number for t in running]
    study.set_user_attr(INTERRUPTED_ATTR, sorted({*interrupted(study), *numbers}))
    for t in running:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params)
    return numbers


def interrupted(study: optuna.Study) -> set[int]:
    return set(study.user_attrs.get(INTERRUPTED_ATTR, []))


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials less the interrupted ones (replaced by their re-queued copies)."""
    skip = interrupted(study)
    return [t for t in study.get_trials(deepcopy=False) if t.number not in skip]


def trial_budget(spec: SweepSpec) -> int:
    """maxTrials, or the grid's size when that is smaller."""
    if spec.sampler != "grid":
        return spec.max_trials
    size = math.prod(len(p.values or ()) for p in spec.search_space.values())
    return min(spec.max_trials, size)


def launched(study: optuna.Study) -> int:
    """Trials started so far (towards maxTrials)."""
    return sum(t.state != TrialState.WAITING for t in counted_trials(study))


def failed(study: optuna.Study) -> int:
    """Failed trials (towards maxFailedTrials)."""
    return sum(t.state == TrialState.FAIL for t in counted_trials(study))


def summarise(
    study: optuna.Study, spec: SweepSpec, names: Mapping[int, str]
) -> tuple[TrialCounts, TrialSummary | None, float | None, list[TrialSummary]]:
    """Trial counts by state, the best trial and value (single objective) and the Pareto
    front (several objectives), for the status and the local table."""
    trials = counted_trials(study)
    states = [t.state for t in trials]
    counts = TrialCounts(
        pending=states.count(TrialState.WAITING),
        running=states.count(TrialState.RUNNING),
        completed=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
    )
    if not any(s == TrialState.COMPLETE for s in states):
        return counts, None, None, []
    seen = tried(trials)
    if spec.objective is not None:
        best = study.best_trial
        return counts, _summary(best, spec, names, seen), best.value, []
    front = sorted(study.best_trials, key=lambda t: t.number)[:64]
    return counts, None, None, [_summary(t, spec, names, seen) for t in front]


def trial_summary(trial: FrozenTrial, spec: SweepSpec, name: str) -> TrialSummary:
    return _summary(trial, spec, {trial.number: name})


def sharpe_prefix(spec: SweepSpec) -> str:
    """Whose test figures are a trial's Sharpe: a TrainingRun's `backtest_*`; an RLRun's
    agent's (a Sweep's RLRun template has one: `SweepSpec` refuses more)."""
    if isinstance(spec.template, RLRunTemplate):
        return spec.template.spec.agents[0].name
    return "backtest"


def trial_sharpe(spec: SweepSpec, metrics: Mapping[str, float]) -> SharpeStats | None:
    """The Sharpe statistics in a trial run's final metrics; None when it logged no full set."""
    return SharpeStats.from_metrics(metrics, sharpe_prefix(spec))


def tried(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials the search saw a result of, which the deflation counts: completed, pruned,
    and failed ones that reported a value or logged a Sharpe (a run that failed before its
    first epoch showed nothing to select on). Pass `counted_trials`: an interrupted trial
    counts once, as its re-run."""
    seen = (TrialState.COMPLETE, TrialState.PRUNED)
    return [
        t for t in trials
        if t.state in seen or (t.state == TrialState.FAIL
                               and (t.intermediate_values or SHARPE_ATTR in t.user_attrs))
    ]  # fmt: skip


def sharpe_summary(trial: FrozenTrial, seen: Sequence[FrozenTrial]) -> SharpeSummary | None:
    """`trial`'s Sharpe ratio, interval, PSR and Deflated Sharpe Ratio over the trials `seen`
    (see `tried`); None when its run logged no Sharpe."""
    stats = stored_sharpe(trial)
    if stats is None:
        return None
    sharpes = [s.sharpe for s in map(stored_sharpe, seen) if s is not None]
    n_trials = max(len(seen), 1)
    return SharpeSummary(
        value=stats.sharpe,
        ci_low=stats.ci_low,
        ci_high=stats.ci_high,
        psr=min(max(stats.psr, 0.0), 1.0),  # as logged: keep the status valid whatever it says
        deflated=deflated_sharpe_ratio(stats, sharpes or [stats.sharpe], n_trials),
        trials=n_trials,
        periods=stats.periods,
    )


def stored_sharpe(trial: FrozenTrial) -> SharpeStats | None:
    """The Sharpe statistics kept on a trial when it was told."""
    kept = trial.user_attrs.get(SHARPE_ATTR)
    return SharpeStats.from_metrics(kept) if isinstance(kept, dict) else None


def significance_metrics(best: TrialSummary | None) -> dict[str, float]:
    """The best trial's Sharpe significance as the sweep's MLflow metrics (none without one)."""
    if best is None or best.sharpe is None:
        return {}
    s = best.sharpe
    return {"best_sharpe": s.value, "best_sharpe_ci_low": s.ci_low,
            "best_sharpe_ci_high": s.ci_high, "best_psr": s.psr,
            "best_deflated_sharpe": s.deflated, "sharpe_trials": float(s.trials)}  # fmt: skip


def _summary(
    trial: FrozenTrial,
    spec: SweepSpec,
    names: Mapping[int, str],
    seen: Sequence[FrozenTrial] = (),
) -> TrialSummary:
    return TrialSummary(
        name=names.get(trial.number, f"trial-{trial.number}"),
        number=trial.number,
        params=decode_params(spec, trial.params),
        values=list(trial.values or []),
        sharpe=sharpe_summary(trial, seen) if seen else None,
    )


def _record_sharpe(study: optuna.Study, number: int, stats: SharpeStats) -> None:
    """Keep a trial's Sharpe statistics on it, unless it is already finished (told twice)."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    if not storage.get_trial(trial_id).state.is_finished():
        storage.set_trial_user_attr(trial_id, SHARPE_ATTR, stats.as_metrics())


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not stop the study when the grid is done: Study.stop() works
    only inside study.optimize, and the sweep stops itself at `trial_budget`."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        pass


def _live_trial(study: optuna.Study, number: int) -> optuna.trial.Trial:
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def _objectives(spec: SweepSpec) -> Sequence[Any]:
    return [spec.objective] if spec.objective is not None else list(spec.objectives or [])


def _encoded(param: Parameter) -> bool:
    return any(not isinstance(v, _PRIMITIVE) for v in param.values or ())


def _choices(param: Parameter) -> tuple[Any, ...]:
    values = param.values or []
    if _encoded(param):
        return tuple(json.dumps(v, sort_keys=True) for v in values)
    return tuple(values)
