"""torchrun through `tradewind.trainer.launch` keeps a rank's exit code: the permanent codes
(64 bad config, 65 non-finite loss, 66 no data) reach the pod's status, where plain
torchrun would turn every failure into 1 and the operator would retry it."""

import subprocess
import sys
from pathlib import Path

import pytest


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
