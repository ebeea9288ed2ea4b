"""Parsed runs share their equal parts: a run's worker keeps its parsed model between
reconciles (re-parsing costs ~3 ms), ~16 KB for a TrainingRun of 25 nested models. Runs
written from one template, or leaving sections at their defaults, hold equal sections; each
is kept once. The models are read-only to the operator (`SpecCache`)."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_IN_USE: weakref.WeakValueDictionary[tuple[type, bytes], BaseModel] = weakref.WeakValueDictionary()


def _shared_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return shared(value)
    if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
        return [_shared_value(v) for v in value]
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        return {k: _shared_value(v) for k, v in value.items()}
    return value


def shared(model: M) -> M:
    """`model`, or an equal one already in use, with its nested models shared likewise.
    Equal means the same values and the same fields set (exclude_unset dumps differ
    otherwise): key, the digest of both dumps."""
    for name, value in model.__dict__.items():
        model.__dict__[name] = _shared_value(value)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.model_dump_json().encode())
    digest.update(b"\0")
    digest.update(model.model_dump_json(exclude_unset=True).encode())
    key = (type(model), digest.digest())
    existing = _IN_USE.get(key)
    if existing is not None:
        return existing  # type: ignore[return-value]
    _IN_USE[key] = model
    return model
