"""torchrun through `tradewind.trainer.launch` keeps a rank's exit code: the permanent codes
(64 bad config, 65 non-finite loss, 66 no data) reach the pod's status, where plain
torchrun would turn every failure into 1 and the operator would retry it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tradewind.devstack.processes import free_port
from tradewind.trainer.launch import with_store_host


def _launch(tmp_path: Path, launcher: str, code: int) -> int:
    script = tmp_path / "rank.py"
    script.write_text(f"import sys\nsys.exit({code})\n")
    argv = [sys.executable, "-m", launcher, "--standalone", "--nnodes=1", "--nproc-per-node=1"]
    return subprocess.run([*argv, str(script)], capture_output=True, check=False).returncode


@pytest.mark.parametrize("code", [0, 65])
def test_the_failed_ranks_exit_code_is_the_launchers(tmp_path: Path, code: int) -> None:
    assert _launch(tmp_path, "tradewind.trainer.launch", code) == code


def test_plain_torchrun_would_hide_it(tmp_path: Path) -> None:
    assert _launch(tmp_path, "torch.distributed.run", 65) == 1


C10D = ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=run-0-0.run:29400", "train.py"]


@pytest.mark.parametrize(("rank", "is_host"), [("0", "true"), ("1", "false")])
def test_pod_zero_hosts_the_rendezvous_store_without_asking_dns(rank: str, is_host: str) -> None:
    """The endpoint names pod 0: it hosts the store whether or not cluster DNS has its record
    yet (torchrun's own inference resolves the name and fails the attempt when it cannot)."""
    argv = with_store_host(C10D, {"PET_NODE_RANK": rank})
    assert argv == [f"--rdzv-conf=is_host={is_host}", *C10D]


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (C10D, {}),  # no node rank: not a pod of the operator's
        (["--rdzv-conf=is_host=false", *C10D], {"PET_NODE_RANK": "0"}),  # said already
        (["--rdzv_backend", "static", "train.py"], {"PET_NODE_RANK": "0"}),
        (["--standalone", "train.py"], {"PET_NODE_RANK": "0", "PET_RDZV_BACKEND": "c10d"}),
    ],
)
def test_otherwise_the_arguments_are_left_as_they_are(argv: list[str], env: dict[str, str]) -> None:
    assert with_store_host(argv, env) == argv


def test_a_rendezvous_with_is_host_runs(tmp_path: Path) -> None:
    """torchrun accepts the config it adds: one node, c10d on a local port, pod 0."""
    script = tmp_path / "rank.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'])\n")
    port = free_port()
    argv = [sys.executable, "-m", "tradewind.trainer.launch", "--nnodes=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", str(script)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env=os.environ | {"PET_NODE_RANK": "0"}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0" in done.stdout
