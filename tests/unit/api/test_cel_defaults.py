"""The CRD's rules, which read the defaults spelled into them, judge a manifest as written
exactly as the models' rules judge it defaulted (the CRD stores no defaults)."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import cel
import pytest
import yaml

from tests.corpus import example_paths, invalid_cases
from tradewind.api import KINDS
from tradewind.api.cel_defaults import DefaultsRewriteError, with_defaults
from tradewind.api.crd import build_crd, structural_schema
from tradewind.api.spec_paths import unwrap_optional


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """As the apiserver hands it to CEL: a `number` is a double."""
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props is not None:
            return {k: _typed(v, props.get(k, {})) for k, v in value.items()}
        if isinstance(extra, dict):
            return {k: _typed(v, extra) for k, v in value.items()}
        return value
    if isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _defaulted(value: Any, schema: dict[str, Any]) -> Any:
    """What the apiserver stored when the schema carried the defaults."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        out = dict(value)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return {k: _defaulted(v, props.get(k, {})) for k, v in out.items()}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: _defaulted(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list):
        return [_defaulted(v, schema.get("items", {})) for v in value]
    return value


def _outcome(rule: str, node: Any) -> object:
    try:
        return cel.compile(rule).execute({"self": node})
    except Exception:  # an error is an outcome too: the apiserver rejects
        return "error"


def _compare(raw: Any, full: Any, crd: dict[str, Any], model: dict[str, Any], path: str):
    """(path, rule, as written, defaulted) for every rule of every node the manifest has."""
    rules = [r["rule"] for r in crd.get("x-kubernetes-validations", ())]
    originals = [r["rule"] for r in model.get("x-kubernetes-validations", ())]
    assert len(rules) == len(originals), path
    for rule, original in zip(rules, originals, strict=True):
        if "oldSelf" not in rule:
            yield path, rule, _outcome(rule, raw), _outcome(original, full)
    if isinstance(raw, dict) and "properties" in crd:
        for key, value in raw.items():
            if key in crd["properties"]:
                yield from _compare(
                    value, full[key], crd["properties"][key], model["properties"][key],
                    f"{path}.{key}",
                )  # fmt: skip
    elif isinstance(raw, dict) and isinstance(crd.get("additionalProperties"), dict):
        for key, value in raw.items():
            yield from _compare(
                value, full[key], crd["additionalProperties"], model["additionalProperties"],
                f"{path}{{{key}}}",
            )  # fmt: skip
    elif isinstance(raw, list) and "items" in crd:
        for i, value in enumerate(raw):
            yield from _compare(value, full[i], crd["items"], model["items"], f"{path}[{i}]")


def _schemas(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    resource = KINDS[kind]
    crd = build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_model = unwrap_optional(resource.model_fields["spec"].annotation)
    return crd["properties"]["spec"], structural_schema(spec_model, f"{kind}.spec")


def _manifests() -> list[tuple[str, Path]]:
    cases = [(p.name, p) for p in example_paths()]
    cases += [(c.name, c.path) for c in invalid_cases() if c.family == "combination"]
    return cases


@pytest.mark.parametrize(("name", "path"), _manifests(), ids=lambda v: str(v))
def test_rules_judge_a_manifest_as_written_as_the_models_judge_it_defaulted(
    name: str, path: Path
) -> None:
    checked = 0
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
            continue
        crd, model = _schemas(doc["kind"])
        raw = _typed(_plain(doc.get("spec") or {}), crd)
        full = _typed(_defaulted(raw, model), model)
        for where, rule, as_written, defaulted in _compare(raw, full, crd, model, ".spec"):
            assert as_written == defaulted, f"{name} {where}: {rule}"
            checked += 1
    assert checked


def test_an_invalid_combination_left_to_defaults_is_still_refused() -> None:
    """fp16 needs cuda: a run that leaves `device` out (default cpu) is refused as written."""
    crd, _ = _schemas("TrainingRun")
    rule = next(r["rule"] for r in crd["x-kubernetes-validations"] if "'fp16'" in r["rule"])
    assert _outcome(rule, {"training": {"precision": "fp16"}}) is False
    assert _outcome(rule, {"training": {"precision": "fp16"}, "device": "cuda"}) is True
    assert _outcome(rule, {}) is True


def test_a_default_reads_as_written_where_the_field_is_left_out() -> None:
    schema = {
        "type": "object",
        "properties": {
            "split": {"type": "number", "default": 1},
            "inner": {
                "type": "object",
                "default": {"heads": 4},
                "properties": {"heads": {"type": "integer", "default": 4}, "opt": {}},
            },
            "names": {"type": "array", "default": [], "items": {"type": "string"}},
        },
    }
    assert with_defaults("self.split > 0.5", schema) == "(has(self.split) ? self.split : 1.0) > 0.5"
    assert (
        with_defaults("self.inner.heads == 4", schema)
        == "(has(self.inner) && has(self.inner.heads) ? self.inner.heads : 4) == 4"
    )
    has_opt = with_defaults("has(self.inner.opt)", schema)
    assert has_opt == "(has(self.inner) && has(self.inner.opt))"
    assert with_defaults("has(self.split)", schema) == "true"
    assert (
        with_defaults("self.names.all(n, n != 'x')", schema)
        == "(has(self.names) ? self.names.all(n, n != 'x') : true)"
    )
    assert with_defaults("'self.split' != 'x'", schema) == "'self.split' != 'x'"


def test_defaults_that_disagree_are_refused() -> None:
    schema = {
        "type": "object",
        "properties": {
            "inner": {
                "type": "object",
                "default": {"heads": 8},
                "properties": {"heads": {"type": "integer", "default": 4}},
            }
        },
    }
    with pytest.raises(DefaultsRewriteError, match="heads"):
        with_defaults("self.inner.heads > 0", schema)
