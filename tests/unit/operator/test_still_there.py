"""After a relist leaves an object out, its worker asks the apiserver whether it is gone:
runs and Sweeps alike."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tradewind.operator.loop import RunWorker
from tradewind.operator.sweeps import SweepWorker


class FakeKube:
    def __init__(self, present: set[tuple[str, str, str, str]]) -> None:
        self.present = present
        self.asked: list[tuple[str, str, str, str]] = []

    def exists(self, kind: str, ns: str, name: str, uid: str) -> bool:
        self.asked.append((kind, ns, name, uid))
        return (kind, ns, name, uid) in self.present


def _body(kind: str, uid: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "x", "namespace": "ns", "uid": uid}}


def test_a_sweep_worker_and_a_run_worker_ask_by_kind_and_uid() -> None:
    kube = FakeKube({("Sweep", "ns", "x", "u-1")})
    memo = SimpleNamespace(kube=kube)
    sweep, recreated = (
        SweepWorker(_body("Sweep", "u-1"), memo),
        SweepWorker(_body("Sweep", "u-0"), memo),
    )
    run = RunWorker(_body("TrainingRun", "u-1"), memo)  # type: ignore[arg-type]

    async def ask() -> list[bool]:
        return [await w.exists() for w in (sweep, recreated, run)]

    assert asyncio.run(ask()) == [True, False, False]
    assert kube.asked[-1] == ("TrainingRun", "ns", "x", "u-1")
