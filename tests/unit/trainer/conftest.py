"""Shared fixtures of the trainer tests: the tiny TrainingRun (tests/tiny.py) as a manifest."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tests.tiny import tiny_run


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
