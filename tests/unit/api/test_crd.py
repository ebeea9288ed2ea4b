from typing import Any

import cel
import pytest
import yaml

from tradewind.api import KINDS
from tradewind.api.crd import build_crd, render_crds

RENDERED = render_crds()


def test_crds_folder_is_regenerated_byte_identically(repo_root) -> None:
    committed = {p.name: p.read_text() for p in (repo_root / "crds").glob("*.yaml")}
    assert committed == RENDERED, "crds/ is stale: run `tradewind crds`"


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_crd_fits_the_last_applied_annotation(name: str) -> None:
    assert len(RENDERED[name].encode()) < 128 * 1024


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}{'[]' if key == 'items' else '{}'}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural_and_bounded(kind: str) -> None:
    schema = build_crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if not path.startswith((".spec", ".status")):
            continue
        typed = (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")
        )
        assert typed, f"{path} has no type"
        assert "$ref" not in node and "title" not in node and "examples" not in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            assert "maxLength" in node, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description (kubectl explain)"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_cel_rule_compiles(kind: str) -> None:
    schema = build_crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]
    assert rules
    for rule in rules:
        cel.compile(rule["rule"])


def test_crd_names_columns_and_category() -> None:
    crd = yaml.safe_load(RENDERED["trainingruns.tradewind.dev.yaml"])
    assert crd["spec"]["group"] == "tradewind.dev"
    assert crd["spec"]["names"]["shortNames"] == ["tr"]
    assert crd["spec"]["names"]["categories"] == ["tradewind"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and {"Nodes", "Progress", "Metric", "Age"} <= set(columns)


def test_only_printer_columns_have_schema_defaults() -> None:
    """A stored run holds what was written (the models default it): the CRD's defaults are
    the `kubectl get` columns' only, so the rules spell the others in."""
    for kind, resource in KINDS.items():
        schema = build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        defaulted = {path for path, node in _walk(schema) if "default" in node}
        columns = {c.json_path for c in resource.printer_columns}
        assert defaulted <= columns, (kind, defaulted - columns)
    crd = yaml.safe_load(RENDERED["trainingruns.tradewind.dev.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["nodes"]["default"] == 1
    assert "default" not in spec and "default" not in spec["properties"]["model"]
    assert spec["properties"]["device"]["description"].endswith('Default: "cpu".')
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("(has(self.device) ? self.device : 'cpu')" in r for r in rules)
