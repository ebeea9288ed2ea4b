"""`tradewind demo`, the README's first command after set-up, run twice in a folder of its own:
the 2-node quickstart trains in containers of the trainer image on the real node and succeeds,
the checkpoint, MLflow run and final metrics are printed, and everything is stopped afterwards
(nothing of the node is left on the machine); the second run replaces the first run, reuses
the stack's data and finds the image already in the node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradewind.devstack import DevStack, StackConfig, node_cleanup, real_node
from tradewind.devstack.stack import cache_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo's real node needs root"),
    pytest.mark.skipif(
        not (cache_dir() / "bin" / "current" / "kubelet").is_file(),
        reason="no kubelet in the binary cache: hack/build-binaries.sh kubernetes-node coredns",
    ),
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
        assert "tradewind-trainer:0.1.0: copied into the node" in first, first
        stack = DevStack(StackConfig(dev_dir=directory))
        assert set(stack.status().values()) == {"stopped"}
        plan = real_node.load_plan(stack)
        assert plan is not None
        assert node_cleanup.mounts_under(plan.dir) == []
        assert node_cleanup.shims(plan) == [] and node_cleanup.kube_chains() == []

        second = _demo(directory)
        assert "replacing the previous run quickstart-2node" in second, second
        assert "tradewind-trainer:0.1.0: the node already holds this build" in second, second
        assert "Succeeded in" in second and "step-0000000003" in second, second
        assert set(DevStack(StackConfig(dev_dir=directory)).status().values()) == {"stopped"}
    finally:
        DevStack(StackConfig(dev_dir=directory)).destroy()
