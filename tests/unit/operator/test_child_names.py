"""Child names and labels: kind in the names (a TrainingRun and an RLRun of one name never
share a child), no two (kind, name, attempt) alike, Kubernetes' length limits kept, and the
run's uid on every child and pod."""

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tradewind.api import RLRun, TrainingRun, parse_resource
from tradewind.api.resources import NAME_PATTERN, Resource
from tradewind.operator import builders
from tradewind.operator.settings import OperatorSettings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_ATTEMPT = 10**6  # disruptions and spec changes add attempts beyond maxRestarts


def _run(kind: str, name: str, uid: str | None = None) -> TrainingRun | RLRun:
    spec: dict[str, Any] = (
        {"agents": [{"name": "ppo", "algorithm": "ppo"}]} if kind == "RLRun" else {}
    )
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if uid:
        meta["uid"] = uid
    run = parse_resource(
        {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
    )
    assert isinstance(run, TrainingRun | RLRun)
    return run


def _names(run: TrainingRun | RLRun, attempt: int) -> set[str]:
    return {
        builders.job_name(run, attempt),
        builders.combine_job_name(run, attempt),
        builders.config_name(run, attempt),
    }


def test_trainingrun_names_are_as_before_and_rlrun_names_carry_the_kind() -> None:
    tr, rl = _run("TrainingRun", "quickstart-2node"), _run("RLRun", "quickstart-2node")
    assert builders.job_name(tr, 0) == "quickstart-2node-0"  # `tradewind logs quickstart-2node-0-0`
    assert builders.config_name(tr, 1) == "quickstart-2node-1-config"
    assert builders.service_name(tr) == "quickstart-2node"
    assert builders.job_name(rl, 0) == "quickstart-2node-rl0"
    assert builders.combine_job_name(rl, 2) == "quickstart-2node-rl2-combine"
    assert builders.config_name(rl, 0) == "quickstart-2node-rl0-config"
    assert builders.needs_service(tr) and not builders.needs_service(rl)
    # a ConfigMap is the run's own by its name: never read, never an earlier run's
    uid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert builders.config_name(_run("TrainingRun", "r", uid), 0) == f"r-0-config-{uid}"


names = st.from_regex(NAME_PATTERN, fullmatch=True).filter(
    lambda n: len(n) <= Resource.max_name_length
)
children = st.tuples(st.sampled_from(["TrainingRun", "RLRun"]), names, st.integers(0, MAX_ATTEMPT))


@given(children, children)
def test_no_two_runs_or_attempts_share_a_child_name(a: Any, b: Any) -> None:
    if a == b:
        return
    first, second = _run(a[0], a[1]), _run(b[0], b[1])
    assert not _names(first, a[2]) & _names(second, b[2])


@given(st.sampled_from(["TrainingRun", "RLRun"]), names, st.integers(0, MAX_ATTEMPT))
def test_names_up_to_the_limit_fit_kubernetes_limits(kind: str, name: str, attempt: int) -> None:
    run = _run(kind, name)
    # the pod hostname `<job>-<index>` (and the job-name label) is a 63-character label
    assert DNS_LABEL.match(builders.job_name(run, attempt))
    assert len(f"{builders.job_name(run, attempt)}-255") <= 63
    assert len(f"{builders.combine_job_name(run, attempt)}-0") <= 63
    assert len(builders.config_name(run, attempt)) <= 253
    assert builders.service_name(run) == name and len(name) <= 63


def test_long_names_keep_their_start_and_differ_by_a_hash() -> None:
    first, second = "a" * 60 + "xyz", "a" * 60 + "xyw"
    jobs = [builders.job_name(_run("TrainingRun", n), 3) for n in (first, second)]
    assert jobs[0] != jobs[1] and all(j.startswith("a" * 30) and j.endswith("-3") for j in jobs)
    assert builders.job_name(_run("TrainingRun", "short"), 3) == "short-3"


def test_every_child_and_pod_carries_the_runs_uid_kind_and_name() -> None:
    owner = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "name": "r",
        "uid": "u-9",
    }
    run = _run("TrainingRun", "r", uid="u-9")
    job = builders.build_job(run, 0, "u-9", owner, OperatorSettings())
    expected = {
        builders.RUN_LABEL: "r",
        builders.KIND_LABEL: "TrainingRun",
        builders.RUN_UID_LABEL: "u-9",
    }
    for labels in (
        job["metadata"]["labels"],
        job["spec"]["template"]["metadata"]["labels"],
        builders.build_configmap(run, 0, owner)["metadata"]["labels"],
    ):
        assert expected.items() <= labels.items()
    service = builders.build_service(run, owner)
    assert service["spec"]["selector"] == expected  # its own pods only, not an RLRun's "r"
    assert "uid" not in builders.build_configmap(run, 0, owner)["data"]["run.yaml"]
