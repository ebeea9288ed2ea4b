"""Normal Events within a per-namespace budget; Warnings always."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY

from tradewind.operator.event_budget import EventBudget
from tradewind.operator.kube import Kube

RUN = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "r", "namespace": "team-a", "uid": "u"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Posting(Kube):
    """Kube that records what it would send."""

    def __init__(self, budget: EventBudget | None) -> None:
        self.event_budget = budget
        self.sent: list[dict[str, Any]] = []

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        self.sent.append(body)
        return json.dumps(body).encode()


def _shed() -> float:
    return REGISTRY.get_sample_value("tradewind_normal_events_shed_total") or 0.0


def test_a_namespace_gets_its_burst_then_the_rate() -> None:
    clock = Clock()
    budget = EventBudget(per_second=2.0, burst=3, clock=clock)
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert [budget.take("a") for _ in range(2)] == [True, False]
    clock.now += 60  # refills up to the burst, not beyond
    assert sum(budget.take("a") for _ in range(10)) == 3


def test_one_namespace_does_not_spend_anothers_budget() -> None:
    budget = EventBudget(per_second=0.0, burst=2, clock=Clock())
    assert [budget.take("a") for _ in range(3)] == [True, True, False]
    assert [budget.take("b") for _ in range(3)] == [True, True, False]


def test_normal_events_over_budget_are_shed_and_counted_warnings_always_posted() -> None:
    kube = Posting(EventBudget(per_second=0.0, burst=1, clock=Clock()))
    shed = _shed()
    kube.event(RUN, "Normal", "Created", "attempt 0 created")
    kube.event(RUN, "Normal", "AllNodesRunning", "2/2 pods running")
    kube.event(RUN, "Warning", "AttemptFailed", "pod r-0-0 exited 1")
    kube.event(RUN, "Warning", "AttemptFailed", "pod r-0-1 exited 1")
    assert [e["reason"] for e in kube.sent] == ["Created", "AttemptFailed", "AttemptFailed"]
    assert _shed() == shed + 1


def test_burst_zero_posts_warnings_only_and_no_budget_posts_all() -> None:
    warnings_only = Posting(EventBudget(per_second=5.0, burst=0, clock=Clock()))
    warnings_only.event(RUN, "Normal", "Created", "attempt 0 created")
    warnings_only.event(RUN, "Warning", "CreateFailed", "quota")
    assert [e["reason"] for e in warnings_only.sent] == ["CreateFailed"]
    unlimited = Posting(None)
    for _ in range(100):
        unlimited.event(RUN, "Normal", "Created", "attempt 0 created")
    assert len(unlimited.sent) == 100
