"""`tradewind demo`, the README's first command after set-up, run twice in a folder of its own:
the 2-node quickstart succeeds on executing pods, the checkpoint, MLflow run and final metrics
are printed, and everything is stopped afterwards; the second run replaces the first run and
reuses the stack's data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradewind.devstack import DevStack, StackConfig
from tradewind.devstack.executor_net import leftovers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo's executor needs root"),
]


def _demo(directory: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEWIND_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "tradewind.cli", "demo", "--dir", str(directory)],
        capture_output=True,
        text=True,
        env=env | {"COLUMNS": "200"},
        timeout=1500,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_demo_runs_the_quickstart_end_to_end_twice(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    try:
        first = _demo(directory)
        for text in (
            "Succeeded in",
            "checkpoint (MinIO): s3://tradewind/default/quickstart-2node/",  # then the run's uid
            "/step-0000000003",
            "MLflow run:",
            "final metrics",
            "val_loss",
        ):
            assert text in first, first
        stack = DevStack(StackConfig(dev_dir=directory))
        assert set(stack.status().values()) == {"stopped"}
        assert leftovers(stack.state["executor"]["prefix"]) == []

        second = _demo(directory)
        assert "replacing the previous run quickstart-2node" in second, second
        assert "Succeeded in" in second and "step-0000000003" in second, second
        assert set(DevStack(StackConfig(dev_dir=directory)).status().values()) == {"stopped"}
    finally:
        DevStack(StackConfig(dev_dir=directory)).destroy()
