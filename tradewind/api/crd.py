"""CustomResourceDefinitions generated from the resource models (`tradewind crds`).

The pydantic JSON schema is rewritten into a Kubernetes structural schema: references
inlined, Optional unwrapped, OpenAPI 3.0 exclusive bounds, int-or-string and
preserve-unknown-fields markers, and the models' CEL rules as `x-kubernetes-validations`.

The models' defaults are not schema defaults: a stored run holds what its author wrote, and
the operator, `tradewind validate` and the trainer default it through the models. The CEL
rules read the defaults spelled into them instead (`cel_defaults`). The one exception is a
printer column's field, so `kubectl get` shows its default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from tradewind.api.base import GROUP, VERSION
from tradewind.api.cel_defaults import with_defaults
from tradewind.api.resources import CATEGORY, KINDS, NAME_PATTERN, Resource
from tradewind.api.spec_paths import unwrap_optional


class CRDSchemaError(ValueError):
    """A model cannot be expressed as a bounded structural schema."""


class _WithFactoryDefaults(GenerateJsonSchema):
    """Emit defaults of default_factory fields, fully dumped: the CEL rules are rewritten
    to read them (`cel_defaults`), and nested defaults must agree with them."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)

    def encode_default(self, dft: Any) -> Any:
        return TypeAdapter(type(dft)).dump_python(
            dft, mode="json", by_alias=True, exclude_none=True
        )


_KEEP = {
    "type", "description", "required", "enum", "format", "pattern", "default",
    "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "maxProperties",
}  # fmt: skip


def _keywords(node: dict[str, Any]) -> dict[str, Any]:
    """The keywords of one node that a structural schema allows, in OpenAPI 3.0 form."""
    out = {k: v for k, v in node.items() if k in _KEEP or k.startswith("x-kubernetes-")}
    if "const" in node:
        out["enum"] = [node["const"]]
    if out.get("default", 0) is None:
        del out["default"]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[flag] = node[bound]
            out[bound] = True
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    return out


_ORDER = ("description", "type", "default", "required")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a stable, readable order: description and type first, properties last."""
    head = [k for k in _ORDER if k in node]
    tail = [k for k in ("properties", "additionalProperties", "items") if k in node]
    middle = sorted(k for k in node if k not in head and k not in tail)
    return {k: node[k] for k in head + middle + tail}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


class _Converter:
    def __init__(self, defs: dict[str, Any], where: str) -> None:
        self.defs = defs
        self.where = where

    def convert(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        node = self._resolve(node)
        if "anyOf" in node:
            return self._union(node, path)
        out = _keywords(node)
        kind = node.get("type")
        if kind is None and not out.get("x-kubernetes-preserve-unknown-fields"):
            return {**out, "x-kubernetes-preserve-unknown-fields": True}
        if kind == "object":
            self._object(node, out, path)
        elif kind == "array":
            if "maxItems" not in node:
                raise CRDSchemaError(f"{self.where}{path}: list without max_length")
            out["items"] = self.convert(node["items"], f"{path}[]")
        elif kind == "string" and not ({"maxLength", "enum", "format"} & out.keys()):
            raise CRDSchemaError(f"{self.where}{path}: string without max_length")
        return _ordered(out)

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None and len(node.get("allOf", ())) == 1:
            ref = node["allOf"][0].get("$ref")
        if ref is None:
            return node
        target = dict(self.defs[ref.split("/")[-1]])
        siblings = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
        return {**target, **siblings}

    def _union(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        options = [self._resolve(o) for o in node["anyOf"] if o.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return self.convert({**options[0], **outer}, path)
        if outer.get("x-kubernetes-int-or-string"):
            return {**outer, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        raise CRDSchemaError(
            f"{self.where}{path}: unions other than Optional or int|str are not structural"
        )

    def _object(self, node: dict[str, Any], out: dict[str, Any], path: str) -> None:
        extra = node.get("additionalProperties")
        if "properties" in node:
            out["properties"] = {
                k: self.convert(v, f"{path}.{k}") for k, v in node["properties"].items()
            }
            if extra is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(extra, dict) and extra:
            if "maxProperties" not in node:
                raise CRDSchemaError(f"{self.where}{path}: map without max_length")
            out["additionalProperties"] = self.convert(extra, f"{path}{{}}")
        else:  # dict[str, Any]: CEL sees the object, not its unknown fields
            out["x-kubernetes-preserve-unknown-fields"] = True


def structural_schema(model: type[BaseModel], where: str) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model."""
    raw = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults
    )
    return _Converter(raw.pop("$defs", {}), where).convert(raw, "")


def build_crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    kind = resource.__name__
    fields = resource.model_fields
    spec = structural_schema(unwrap_optional(fields["spec"].annotation), f"{kind}.spec")
    spec["description"] = fields["spec"].description
    if not fields["spec"].is_required():
        spec["default"] = (
            fields["spec"]
            .get_default(call_default_factory=True)
            .model_dump(mode="json", by_alias=True, exclude_none=True)
        )
    status = structural_schema(unwrap_optional(fields["status"].annotation), f"{kind}.status")
    status["description"] = fields["status"].description
    root: dict[str, Any] = {
        "type": "object",
        "description": " ".join(resource.description.split()),
        "properties": {
            "apiVersion": {"type": "string", "description": "tradewind.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": resource.max_name_length,
                        "pattern": NAME_PATTERN,
                    }
                },
            },
            "spec": spec,
            "status": status,
        },
        "required": ["spec"] if fields["spec"].is_required() else [],
        "x-kubernetes-validations": [r.to_crd() for r in resource.cel_rules],
    }
    if not root["required"]:
        del root["required"]
    _spell_defaults_into_rules(root)
    _drop_defaults(root, {c.json_path for c in resource.printer_columns}, "")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tradewind"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": resource.plural,
                "singular": kind.lower(),
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in resource.printer_columns],
                }
            ],
        },
    }


def _children(node: dict[str, Any], path: str) -> list[tuple[dict[str, Any], str]]:
    out = [(child, f"{path}.{k}") for k, child in node.get("properties", {}).items()]
    for key, mark in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(node.get(key), dict):
            out.append((node[key], path + mark))
    return out


def _spell_defaults_into_rules(node: dict[str, Any]) -> None:
    for rule in node.get("x-kubernetes-validations", ()):
        if "oldSelf" not in rule["rule"]:  # transition rules compare what was written
            rule["rule"] = with_defaults(rule["rule"], node)
    for child, _ in _children(node, ""):
        _spell_defaults_into_rules(child)


def _drop_defaults(node: dict[str, Any], keep: set[str], path: str) -> None:
    """Schema defaults would be stored in every object: keep only the printer columns'. A
    scalar's default goes into its description instead (`kubectl explain`)."""
    if path not in keep and "default" in node:
        default = node.pop("default")
        if not isinstance(default, dict | list) and node.get("description"):
            node["description"] += f" Default: {json.dumps(default)}."
    for child, child_path in _children(node, path):
        _drop_defaults(child, keep, child_path)


def render_crds() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    header = "# Generated by `tradewind crds` from tradewind/api. Do not edit.\n"
    return {
        f"{cls.plural}.{GROUP}.yaml": header
        + yaml.dump(build_crd(cls), Dumper=_NoAliasDumper, sort_keys=False, width=100)
        for cls in KINDS.values()
    }


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into `directory`, removing stale generated files; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_crds()
    for old in directory.glob(f"*.{GROUP}.yaml"):
        if old.name not in rendered:
            old.unlink()
    paths = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths
