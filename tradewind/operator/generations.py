"""Which generation a run's pods run: a hash of the spec they were created from.

Every spec field but the lifecycle ones (`api.common.Lifecycle`: restarts, suspend, deadlines,
failure and clean-up policy, TTL) reaches the pods, through the Job or the run's ConfigMap. A
change of one rolls a new attempt; until it is created, status.observedGeneration stays the
generation the running pods were created from."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from tradewind.api.common import Lifecycle
from tradewind.operator.builders import Run

LIFECYCLE_FIELDS = frozenset(Lifecycle.model_fields)
"""Spec fields that never reach the pods: a change of one is acted on at once."""


def spec_hash(run: Run) -> str:
    """A hash of what the pods of an attempt of `run` are built from: the spec less its
    lifecycle fields and less every field at its default. The apiserver fills the CRD's
    defaults in (also into stored runs, once an upgrade adds a field): without them, a new
    field changes no running run's hash, and an operator upgrade rolls no attempt."""
    spec = run.spec
    dumped = spec.model_dump(mode="json", by_alias=True, exclude=set(LIFECYCLE_FIELDS))
    text = json.dumps(_not_default(spec, dumped), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _not_default(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """`dumped` (`model` as JSON) less the fields at their default, nested models' too."""
    defaults = _defaults(type(model))
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        if key not in dumped or (name in defaults and dumped[key] == defaults[name]):
            continue
        value = getattr(model, name)
        out[key] = _not_default(value, dumped[key]) if isinstance(value, BaseModel) else dumped[key]
    return out


@functools.cache
def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of a model's optional fields, as JSON (factories called once)."""
    return {
        name: to_jsonable_python(info.get_default(call_default_factory=True), by_alias=True)
        for name, info in cls.model_fields.items()
        if not info.is_required()
    }
