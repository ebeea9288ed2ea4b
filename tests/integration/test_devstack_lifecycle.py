"""`tradewind dev up` is idempotent and `down` leaves no process behind (a second, small
stack beside the session's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.processes import pid_alive, port_in_use

pytestmark = pytest.mark.integration


def test_up_is_idempotent_and_down_stops_everything(tmp_path: Path) -> None:
    stack = DevStack(StackConfig(dev_dir=tmp_path / "stack", nodes=1, with_mlflow=False))
    try:
        stack.up(log=lambda _: None)
        first = dict(stack.state["pids"])
        assert set(stack.status().values()) - {"stopped"} == {"running"}
        assert stack.status()["mlflow"] == "stopped"

        lines: list[str] = []
        stack.up(log=lines.append)
        assert stack.state["pids"] == first
        assert all(line.endswith(")") and "running" in line for line in lines[:-1])
        assert stack.kubeconfig.is_file()
    finally:
        stack.down(log=lambda _: None)
    assert not any(pid_alive(pid) for pid in first.values())
    ports = {k: v for k, v in stack.state["ports"].items() if k not in ("mlflow",)}
    assert not any(port_in_use(p) for p in ports.values()), ports
    assert set(stack.status().values()) == {"stopped"}
