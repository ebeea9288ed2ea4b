"""Honest generations: status.observedGeneration is the generation the current attempt's pods
run. A pod-affecting change of an active run rolls a new attempt (SpecChanged, not counted);
a lifecycle change is observed at once; a suspended run takes a change at its resume."""

from typing import Any

from tests.unit.operator.test_reconcile import RecordingKube, _body, _reconcile
from tests.unit.operator.test_status import JOB, NOW, _pod, _run
from tradewind.api import parse_resource
from tradewind.api.status import RunStatus
from tradewind.operator import builders
from tradewind.operator.generations import spec_hash
from tradewind.operator.status import AttemptState, decide, observe_attempt

RUNNING = observe_attempt(JOB, [_pod("a", "Running"), _pod("b", "Running")])


def _running(**spec: Any) -> RunStatus:
    """A run created (generation 1) and running with `spec`."""
    created = decide(_run(nodes=2, **spec), RunStatus(), AttemptState(exists=False), NOW, 1)
    return decide(_run(nodes=2, **spec), created.status, RUNNING, NOW, 1).status


def _generations(status: RunStatus) -> set[int | None]:
    return {c.observed_generation for c in status.conditions}


def test_a_pod_affecting_change_rolls_a_new_attempt_and_is_observed_once_it_is_created() -> None:
    before = _running()
    assert before.phase == "Running" and before.observed_generation == 1
    changed = _run(nodes=2, image="example.com/trainer:2")
    rolled = decide(changed, before, RUNNING, NOW, 2)
    s = rolled.status
    assert (s.phase, s.attempt, s.restarts) == ("Restarting", 1, 0)
    assert s.observed_generation == 1 and _generations(s) == {1}  # the pods run generation 1
    assert rolled.events == [("Normal", "SpecChanged", rolled.events[0][2])]
    assert "generation 2" in rolled.events[0][2] and "starting attempt 1" in rolled.events[0][2]
    created = decide(changed, s, AttemptState(exists=False), NOW, 2)
    assert created.actions == ["create_attempt"]
    assert created.status.observed_generation == 2 and _generations(created.status) == {2}
    assert created.status.attempt_spec_hash == spec_hash(changed)
    # the new attempt runs the new spec: nothing rolls again
    again = decide(changed, created.status, RUNNING, NOW, 2)
    assert again.status.phase == "Running" and again.status.attempt == 1


def test_a_lifecycle_change_is_observed_at_once() -> None:
    before = _running()
    d = decide(_run(nodes=2, maxRestarts=7, activeDeadlineSeconds=9999,
                    failurePolicy={"permanentExitCodes": [3]}, cleanPodPolicy="All"),
               before, RUNNING, NOW, 2)  # fmt: skip
    assert d.status.phase == "Running" and d.status.attempt == 0 and d.actions == []
    assert d.status.observed_generation == 2


def test_a_change_while_suspended_takes_effect_at_the_resume() -> None:
    suspended = decide(_run(nodes=2, suspend=True), _running(), RUNNING, NOW, 2).status
    held = AttemptState(exists=True, suspended=True, total=2, suspended_by_run=True)
    edited = decide(_run(nodes=2, suspend=True, image="x:2"), suspended, held, NOW, 3)
    assert edited.status.phase == "Suspended" and edited.status.attempt == 0
    assert edited.status.observed_generation == 2
    resumed = decide(_run(nodes=2, image="x:2"), edited.status, held, NOW, 4)
    assert resumed.status.attempt == 1 and "resume_job" not in resumed.actions
    assert resumed.status.observed_generation == 2


def test_a_finished_run_starts_nothing_and_observes_the_change() -> None:
    done = _running().model_copy(update={"phase": "Succeeded"})
    d = decide(_run(nodes=2, image="x:2"), done, AttemptState(exists=False), NOW, 5)
    assert d.actions == [] and d.status.attempt == 0 and d.status.observed_generation == 5


def test_an_attempt_an_older_operator_created_is_taken_as_it_is() -> None:
    legacy = _running().model_copy(update={"attempt_spec_hash": None})
    d = decide(_run(nodes=2, image="x:2"), legacy, RUNNING, NOW, 3)
    assert d.status.attempt == 0 and d.status.observed_generation == 3
    assert d.status.attempt_spec_hash == spec_hash(_run(nodes=2, image="x:2"))


def test_the_hash_leaves_out_lifecycle_fields_and_defaults_the_apiserver_fills_in() -> None:
    run = _run(nodes=2)
    full = run.model_dump(mode="json", by_alias=True, exclude_none=True)  # every default
    assert spec_hash(parse_resource(full)) == spec_hash(run)  # type: ignore[arg-type]
    assert spec_hash(_run(nodes=2, maxRestarts=9, suspend=True)) == spec_hash(run)
    assert spec_hash(_run(nodes=2, training={"epochs": 3})) != spec_hash(run)
    assert spec_hash(_run(nodes=2, podTemplate={"labels": {"a": "b"}})) != spec_hash(run)


def test_an_ensemble_whose_spec_changed_before_its_combine_step_gets_no_combine_job() -> None:
    body = _body()
    body["kind"] = "RLRun"
    agents = [{"name": "ppo", "algorithm": "ppo"}, {"name": "sac", "algorithm": "sac"}]
    body["spec"] = {"agents": agents, "ensemble": {"method": "thompson_sampling"},
                    "environment": {"actionSpace": "continuous"}}  # fmt: skip
    labels = {builders.ATTEMPT_LABEL: "0", builders.ROLE_LABEL: "train"}
    trained = {"metadata": {"name": "r-rl0", "labels": labels}, "spec": {"completions": 2},
               "status": {"conditions": [{"type": "Complete", "status": "True"}]}}  # fmt: skip
    body["status"] = {"phase": "Running", "attempt": 0, "attemptSpecHash": "0" * 20}
    kube = RecordingKube()
    decision = _reconcile(body, kube, jobs=[trained])
    assert decision.status.attempt == 1 and "create_combine" not in decision.actions
    assert ("event", "SpecChanged") in kube.calls
