from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pydantic import ValidationError

from tradewind.api.sweep import Parameter, SweepSpec
from tradewind.significance import sharpe_stats
from tradewind.sweeps import study as sw

optuna.logging.set_verbosity(optuna.logging.WARNING)

TEMPLATE = {
    "kind": "TrainingRun",
    "spec": {
        "data": {"source": "synthetic"},
        "model": {"cnn": {"layers": [{"outChannels": 8, "kernelSize": 3}]}},
        "training": {"epochs": 4},
    },
}


def _spec(**over: Any) -> SweepSpec:
    doc: dict[str, Any] = {
        "template": TEMPLATE,
        "objective": {"metric": "val_loss"},
        "searchSpace": {
            "training.optimizer.learningRate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.4},
            "training.batchSize": {"type": "choice", "values": [32, 64, 128]},
        },
        "maxTrials": 6,
        "parallelism": 2,
        "seed": 7,
    }
    doc.update(over)
    return SweepSpec.model_validate(doc)


def _memory(spec: SweepSpec) -> optuna.Study:
    return sw.create_or_load(spec, "s", optuna.storages.InMemoryStorage())


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ({"type": "uniform", "low": 0, "high": 1}, FloatDistribution(0, 1)),
        ({"type": "uniform", "low": 0, "high": 1, "step": 0.5}, FloatDistribution(0, 1, step=0.5)),
        ({"type": "loguniform", "low": 0.01, "high": 1}, FloatDistribution(0.01, 1, log=True)),
        ({"type": "int", "low": 2, "high": 10, "step": 2}, IntDistribution(2, 10, step=2)),
        ({"type": "int", "low": 1, "high": 64, "log": True}, IntDistribution(1, 64, log=True)),
        ({"type": "choice", "values": [32, 64]}, CategoricalDistribution((32, 64))),
        ({"type": "grid", "values": ["a", "b"]}, CategoricalDistribution(("a", "b"))),
    ],
)  # fmt: skip
def test_parameter_types_map_to_optuna_distributions(param: dict, expected: Any) -> None:
    assert sw.distribution(Parameter.model_validate(param)) == expected


def test_choices_that_are_objects_travel_as_json_and_come_back_as_values() -> None:
    layers = [{"hiddenSize": 16}, {"hiddenSize": 32, "numLayers": 2}]
    spec = _spec(searchSpace={"model.lstm": {"type": "choice", "values": layers}})
    study = _memory(spec)
    seen = []
    for _ in range(6):
        trial, params = sw.ask(study, spec)
        assert params["model.lstm"] in layers
        assert isinstance(trial.params["model.lstm"], str)
        seen.append(params["model.lstm"])
        spec.trial_spec(params)  # applies to the template
        sw.tell(study, spec, trial.number, {"val_loss": 1.0})
    assert len({str(s) for s in seen}) == 2


@pytest.mark.parametrize(
    ("pruner", "cls", "attrs"),
    [
        ({"type": "none"}, optuna.pruners.NopPruner, {}),
        (
            {"type": "successive_halving", "minResource": 2, "reductionFactor": 4},
            optuna.pruners.SuccessiveHalvingPruner,
            {"_min_resource": 2, "_reduction_factor": 4},
        ),
        (
            {"type": "hyperband", "minResource": 1, "maxResource": 9, "reductionFactor": 3},
            optuna.pruners.HyperbandPruner,
            {"_min_resource": 1, "_max_resource": 9, "_reduction_factor": 3},
        ),
        (
            {"type": "median", "startupTrials": 3, "warmupSteps": 2},
            optuna.pruners.MedianPruner,
            {"_n_startup_trials": 3, "_n_warmup_steps": 2},
        ),
    ],
)
def test_pruner_mapping(pruner: dict, cls: type, attrs: dict) -> None:
    made = sw.make_pruner(_spec(pruner=pruner))
    assert type(made) is cls
    for name, value in attrs.items():
        assert getattr(made, name) == value


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
    ],
)
def test_sampler_mapping(sampler: str, cls: type) -> None:
    assert type(sw.make_sampler(_spec(sampler=sampler))) is cls


def test_a_seeded_study_repeats_its_parameters() -> None:
    spec = _spec(sampler="random")
    first = [sw.ask(_memory(spec), spec)[1] for _ in range(1)]
    again = [sw.ask(_memory(spec), spec)[1] for _ in range(1)]
    assert first == again
    other = _spec(sampler="random", seed=8)
    assert sw.ask(_memory(other), other)[1] != first[0]


def test_grid_visits_every_point_once_and_caps_the_budget() -> None:
    spec = _spec(
        sampler="grid",
        maxTrials=10,
        searchSpace={
            "model.dropout": {"type": "grid", "values": [0.0, 0.2]},
            "training.batchSize": {"type": "grid", "values": [32, 64, 128]},
        },
    )
    assert sw.trial_budget(spec) == 6
    study = _memory(spec)
    points = set()
    for _ in range(sw.trial_budget(spec)):
        trial, params = sw.ask(study, spec)
        points.add((params["model.dropout"], params["training.batchSize"]))
        sw.tell(study, spec, trial.number, {"val_loss": 0.5})
    assert points == {(d, b) for d in (0.0, 0.2) for b in (32, 64, 128)}


def test_objective_values_need_every_objective_finite() -> None:
    spec = _spec(
        objective=None,
        objectives=[{"metric": "val_loss"}, {"metric": "sharpe", "direction": "maximize"}],
    )
    assert sw.objective_values(spec, {"val_loss": 0.5, "sharpe": 1.2, "x": 3}) == [0.5, 1.2]
    assert sw.objective_values(spec, {"val_loss": 0.5}) is None
    assert sw.objective_values(spec, {"val_loss": float("nan"), "sharpe": 1.0}) is None
    assert sw.intermediate_metric(spec) is None
    assert sw.intermediate_metric(_spec()) == "val_loss"


def test_tell_without_the_objective_fails_the_trial() -> None:
    spec = _spec()
    study = _memory(spec)
    trial, _ = sw.ask(study, spec)
    assert sw.tell(study, spec, trial.number, {"train_loss": 0.1}) == TrialState.FAIL
    trial, _ = sw.ask(study, spec)
    assert sw.tell(study, spec, trial.number, None) == TrialState.FAIL
    assert sw.failed(study) == 2
    trial, _ = sw.ask(study, spec)
    assert sw.tell(study, spec, trial.number, {"val_loss": 0.3}) == TrialState.COMPLETE
    counts, best, value, _ = sw.summarise(study, spec, {trial.number: "sw-2"})
    assert (counts.failed, counts.completed) == (2, 1)
    assert best is not None and best.name == "sw-2" and value == 0.3


def test_successive_halving_prunes_a_trial_worse_than_the_others_at_a_rung() -> None:
    spec = _spec(pruner={"type": "successive_halving", "minResource": 1, "reductionFactor": 2})
    study = _memory(spec)
    for loss in (0.1, 0.2, 0.3):
        trial, _ = sw.ask(study, spec)
        for step in range(1, 4):
            sw.report(study, trial.number, step, loss)
        sw.tell(study, spec, trial.number, {"val_loss": loss})
    bad, _ = sw.ask(study, spec)
    assert sw.report(study, bad.number, 1, 5.0) is True
    sw.prune(study, bad.number)
    assert study.trials[bad.number].state == TrialState.PRUNED
    good, _ = sw.ask(study, spec)
    assert sw.report(study, good.number, 1, 0.05) is False


def test_multi_objective_summary_is_the_pareto_front() -> None:
    spec = _spec(
        objective=None,
        objectives=[{"metric": "val_loss"}, {"metric": "sharpe", "direction": "maximize"}],
        sampler="nsga2",
    )
    study = _memory(spec)
    results = [(0.5, 1.0), (0.4, 0.5), (0.6, 0.9), (0.3, 0.2)]  # (0.6, 0.9) is dominated
    for loss, sharpe in results:
        trial, _ = sw.ask(study, spec)
        sw.tell(study, spec, trial.number, {"val_loss": loss, "sharpe": sharpe})
    counts, best, value, front = sw.summarise(study, spec, {})
    assert counts.completed == 4
    assert best is None and value is None
    assert [t.number for t in front] == [0, 1, 3]
    assert front[0].values == [0.5, 1.0]
    assert set(front[0].params) == set(spec.search_space)


def test_a_reloaded_study_keeps_its_trials_and_requeues_the_interrupted(tmp_path: Path) -> None:
    spec = _spec(sampler="random")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = sw.create_or_load(spec, "ns.sweep", storage)
    done, _ = sw.ask(study, spec)
    sw.tell(study, spec, done.number, {"val_loss": 0.4})
    left, left_params = sw.ask(study, spec)  # the sweep dies while this one runs
    sw.report(study, left.number, 1, 0.9)

    again = sw.create_or_load(spec, "ns.sweep", storage)
    assert sw.launched(again) == 2
    assert sw.requeue_running(again) == [left.number]
    assert sw.launched(again) == 1  # the interrupted one no longer counts
    counts, *_ = sw.summarise(again, spec, {})
    assert (counts.pending, counts.running, counts.completed, counts.failed) == (1, 0, 1, 0)
    retry, params = sw.ask(again, spec)
    assert params == left_params and retry.number == 2
    assert sw.launched(again) == 2
    _, fresh_params = sw.ask(again, spec)
    assert fresh_params != left_params
    assert fresh_params != sw.decode_params(spec, done.params)  # no repeat of the first draw
    assert sw.failed(again) == 0
    assert sw.requeue_running(sw.create_or_load(spec, "ns.sweep", storage)) == [2, 3]
    assert sw.interrupted(again) == {1, 2, 3}


def _backtest(seed: int, per_period_sharpe: float, prefix: str = "backtest") -> dict[str, float]:
    """A run's final Sharpe metrics: a year of daily returns with this true Sharpe."""
    returns = np.random.default_rng(seed).normal(per_period_sharpe * 0.01, 0.01, 252)
    return sharpe_stats(returns, 252.0, n_boot=200, seed=seed).as_metrics(prefix)


def test_the_best_trial_is_deflated_by_the_trials_tried() -> None:
    spec = _spec(maxTrials=30)
    study = _memory(spec)
    for i in range(20):  # alike strategies; the objective does not follow the Sharpe
        trial, _ = sw.ask(study, spec)
        sw.report(study, trial.number, 1, 1.0)
        sw.tell(study, spec, trial.number, {"val_loss": 1.0 - 0.01 * i} | _backtest(i, 0.12))
    pruned, _ = sw.ask(study, spec)
    sw.report(study, pruned.number, 1, 2.0)
    sw.prune(study, pruned.number)
    crashed, _ = sw.ask(study, spec)  # failed before its first epoch: not tried
    sw.tell(study, spec, crashed.number, None)
    _, best, _, _ = sw.summarise(study, spec, {})
    assert best is not None and best.number == 19 and best.sharpe is not None
    assert best.sharpe.trials == 21
    assert best.sharpe.psr > 0.9
    assert best.sharpe.deflated < best.sharpe.psr - 0.2
    assert best.sharpe.ci_low < best.sharpe.value < best.sharpe.ci_high
    metrics = sw.significance_metrics(best)
    assert metrics["best_deflated_sharpe"] == best.sharpe.deflated
    assert metrics["best_psr"] == best.sharpe.psr and metrics["sharpe_trials"] == 21
    assert set(metrics) >= {"best_sharpe", "best_sharpe_ci_low", "best_sharpe_ci_high"}


def test_one_trial_tried_is_deflated_to_its_psr() -> None:
    spec = _spec()
    study = _memory(spec)
    trial, _ = sw.ask(study, spec)
    sw.tell(study, spec, trial.number, {"val_loss": 0.3} | _backtest(0, 0.1))
    _, best, _, _ = sw.summarise(study, spec, {})
    assert best is not None and best.sharpe is not None and best.sharpe.trials == 1
    assert best.sharpe.deflated == pytest.approx(best.sharpe.psr)


def test_trials_without_a_sharpe_count_as_tried_and_nothing_crashes() -> None:
    spec = _spec()
    study = _memory(spec)
    trial, _ = sw.ask(study, spec)
    sw.tell(study, spec, trial.number, {"val_loss": 0.3})  # the best, with no Sharpe
    trial, _ = sw.ask(study, spec)
    sw.tell(study, spec, trial.number, {"val_loss": 0.4, "backtest_sharpe": 1.0})  # partial
    _, best, _, _ = sw.summarise(study, spec, {})
    assert best is not None and best.number == 0 and best.sharpe is None
    assert sw.significance_metrics(best) == {}
    trial, _ = sw.ask(study, spec)
    sw.tell(study, spec, trial.number, {"val_loss": 0.1} | _backtest(1, 0.2))
    _, best, _, _ = sw.summarise(study, spec, {})
    assert best is not None and best.sharpe is not None and best.sharpe.trials == 3
    lone = best.sharpe.deflated  # one Sharpe among 3 tried: the estimate's own spread
    assert 0 < lone < best.sharpe.psr


def test_a_pareto_front_shows_each_members_deflated_sharpe() -> None:
    spec = _spec(
        objective=None,
        objectives=[{"metric": "val_loss"}, {"metric": "sharpe", "direction": "maximize"}],
        sampler="nsga2",
    )
    study = _memory(spec)
    for i, (loss, sharpe) in enumerate([(0.5, 1.0), (0.4, 0.5), (0.6, 0.9)]):
        trial, _ = sw.ask(study, spec)
        metrics = {"val_loss": loss, "sharpe": sharpe} | _backtest(i, 0.1)
        sw.tell(study, spec, trial.number, metrics)
    _, _, _, front = sw.summarise(study, spec, {})
    assert [t.number for t in front] == [0, 1]
    assert all(t.sharpe is not None and t.sharpe.trials == 3 for t in front)


def test_an_rlrun_trial_is_chosen_on_its_agents_validation_and_reported_on_its_test() -> None:
    spec = _spec(
        template={"kind": "RLRun", "spec": {"agents": [{"name": "a2c", "algorithm": "a2c"}]}},
        objective={"metric": "eval_total_return", "direction": "maximize"},
        searchSpace={"agents[a2c].hyperparameters.gamma": {"type": "uniform", "low": 0.9,
                                                          "high": 0.99}},
    )  # fmt: skip
    assert sw.sharpe_prefix(spec) == "a2c"
    assert sw.sharpe_prefix(_spec()) == "backtest"
    study = _memory(spec)
    trial, _ = sw.ask(study, spec)
    metrics = {"eval_total_return": 0.1} | _backtest(0, 0.1, "a2c") | _backtest(1, 0.3, "x")
    sw.tell(study, spec, trial.number, metrics)
    _, best, _, _ = sw.summarise(study, spec, {})
    assert best is not None and best.sharpe is not None
    assert best.sharpe.value == metrics["a2c_sharpe"]


@pytest.mark.parametrize(
    ("agents", "metric", "problem"),
    [
        (["ppo"], "ppo_sharpe", "figure on the test market"),
        (["ppo", "a2c"], "ensemble_sharpe", "figure on the test market"),
        (["ppo", "a2c"], "eval_sharpe", "sweep a template with one agent"),
        (["ppo"], "test_sharpe", "measured on the test data"),
    ],
)
def test_an_rlrun_sweep_may_not_choose_on_the_test_market_or_an_ambiguous_agent(
    agents: list[str], metric: str, problem: str
) -> None:
    rl = {"agents": [{"name": a, "algorithm": a} for a in agents]}
    with pytest.raises(ValidationError, match=problem):
        _spec(
            template={"kind": "RLRun", "spec": rl},
            objective={"metric": metric, "direction": "maximize"},
            searchSpace={"agents[ppo].hyperparameters.gamma": {"type": "uniform", "low": 0.9,
                                                              "high": 0.99}},
        )  # fmt: skip
