"""A trainer that runs out of memory exits 67 with its reason: the operator fails the run at
once (OutOfMemory) instead of restarting it into the same wall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny import tiny_run
from tradewind.operator.status import PERMANENT_EXIT_CODES
from tradewind.trainer import entrypoint
from tradewind.trainer.entrypoint import EXIT_OUT_OF_MEMORY, main


def test_memory_error_exits_67_with_its_reason_in_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(entrypoint, "train", out_of_memory)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # the kubelet's file in a pod
    monkeypatch.setattr(entrypoint, "TERMINATION_LOG", termination_log)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run()))
    code = main(["--config", str(config), "--state-dir", str(tmp_path / "state")])
    assert code == EXIT_OUT_OF_MEMORY == 67
    assert "error: out of memory" in capsys.readouterr().err
    assert termination_log.read_text().startswith("error: out of memory: give the pods more")
    assert PERMANENT_EXIT_CODES[code] == "OutOfMemory"
