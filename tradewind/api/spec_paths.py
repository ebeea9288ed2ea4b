"""Dotted paths into a run spec, as a Sweep's searchSpace names them.

`training.optimizer.learningRate` names a field; `agents[0].hyperparameters.gamma` or
`agents[sac].hyperparameters.gamma` names a field of a list item, by index or by its `name`.
Keys under a free-form map (`hyperparameters`) are not checked here: applying a value and
validating the resulting spec checks them.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from typing import Any, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_SEGMENT = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)(\[(?P<item>[^\]]+)\])?$")


class SpecPathError(ValueError):
    """The path does not name a field of the spec."""


def _segments(path: str) -> list[tuple[str, str | None]]:
    out = []
    for part in path.split("."):
        m = _SEGMENT.match(part)
        if not m:
            raise SpecPathError(f"'{part}' is not a field name or name[index]")
        out.append((m["key"], m["item"]))
    return out


def unwrap_optional(annotation: Any) -> Any:
    """Strip Optional and Annotated: `X | None` -> X."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return unwrap_optional(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return unwrap_optional(args[0])
    return annotation


def field_type(model: type[BaseModel], key: str) -> Any:
    return field_info(model, key).annotation


def field_info(model: type[BaseModel], key: str) -> FieldInfo:
    for name, info in model.model_fields.items():
        if key in (info.alias, name):
            return info
    allowed = ", ".join(sorted(info.alias or n for n, info in model.model_fields.items()))
    raise SpecPathError(f"'{key}' is not a field of {model.__name__}; fields: {allowed}")


def _find_item(items: list[Any], item: str) -> int:
    if item.isdigit():
        if int(item) >= len(items):
            raise SpecPathError(f"index {item} is out of range (the template has {len(items)})")
        return int(item)
    for i, entry in enumerate(items):
        if isinstance(entry, dict) and entry.get("name") == item:
            return i
    raise SpecPathError(f"no item named '{item}' in the template")


def check_path(model: type[BaseModel], spec: dict[str, Any], path: str) -> FieldInfo | None:
    """Raise SpecPathError unless `path` names a field of `model` (given the `spec` dict,
    for list items); the field it names, or None when that is under a free-form map."""
    current: Any = model
    node: Any = spec
    info: FieldInfo | None = None
    for key, item in _segments(path):
        if current is dict:
            return None
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            raise SpecPathError(f"'{key}' is below a value that has no fields")
        info = field_info(current, key)
        current = unwrap_optional(info.annotation)
        node = node.get(key, {}) if isinstance(node, dict) else {}
        if item is not None:
            if typing.get_origin(current) is not list:
                raise SpecPathError(f"'{key}' is not a list; drop [{item}]")
            node = node[_find_item(node if isinstance(node, list) else [], item)]
            current = unwrap_optional(typing.get_args(current)[0])
        elif typing.get_origin(current) is dict:
            current = dict
        elif typing.get_origin(current) is list:
            raise SpecPathError(f"'{key}' is a list; name an item as {key}[0] or {key}[name]")
    return info if item is None else None  # a list item: set_path refuses it


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `spec` with `value` at `path`, creating missing objects on the way."""
    out = copy.deepcopy(spec)
    node: Any = out
    segments = _segments(path)
    for depth, (key, item) in enumerate(segments):
        last = depth == len(segments) - 1
        if item is not None:
            items = node.setdefault(key, [])
            node = items[_find_item(items, item)]
            if last:
                raise SpecPathError("a path must end at a field, not a list item")
        elif last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
    return out
