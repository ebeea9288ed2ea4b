"""Shared fixtures of the trainer tests: the tiny TrainingRun (tests/tiny.py) as a manifest,
a local MLflow store, own code run under the launcher."""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from tests.tiny import tiny_run
from tradewind.api import dump_resource, parse_resource


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def tiny_manifest() -> Callable[..., dict[str, Any]]:
    """`tiny_manifest(*spec_overrides)`: the tiny TrainingRun as a manifest dict, with each
    of `spec_overrides` merged into its spec in turn (nested dicts merge, other values
    replace)."""

    def build(*specs: dict[str, Any]) -> dict[str, Any]:
        manifest = tiny_run()
        for spec in specs:
            manifest = _merge(manifest, {"spec": spec})
        return copy.deepcopy(manifest)

    return build


@pytest.fixture
def torch_sandbox() -> Iterator[None]:
    """One intra-op thread (faster than two for models this small) and the global
    deterministic-algorithms flag (set by the trainer's seed_everything) restored after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if torch.are_deterministic_algorithms_enabled() != deterministic:
            torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def local_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir whose MLflow store is local (no server, node 0 of one), with W&B's own
    settings kept out of the user's home; MLflow's URI is reset after."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "RANK", "WORLD_SIZE",
                 "TRADEWIND_CHECKPOINT_URI", "TRADEWIND_RUN_UID", "PET_NODE_RANK"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "state"
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.fixture
def own_code_run(local_tracking: Path, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """`own_code_run(name, tracking, code)`: a TrainingRun `name` of own code with this
    `tracking`, whose code is the Python `code`, run by the launcher in `local_tracking`;
    returns the environment the code saw."""

    def run(name: str, tracking: dict[str, Any], code: str) -> dict[str, str]:
        doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
               "metadata": {"name": name},
               "spec": {"entrypoint": {"module": "x"},
                        "tracking": tracking | {"systemMetrics": False}}}  # fmt: skip
        config = tmp_path / f"{name}.yaml"
        config.write_text(dump_resource(parse_resource(doc)))
        seen = tmp_path / f"{name}-env.json"
        dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
        argv = ["--config", str(config), "--state-dir", str(local_tracking), "--",
                sys.executable, "-c", f"{code}\n{dump}", str(seen)]  # fmt: skip
        from tradewind.trainer import own_code

        assert own_code.main(argv) == 0
        env: dict[str, str] = json.loads(seen.read_text())
        return env

    return run
