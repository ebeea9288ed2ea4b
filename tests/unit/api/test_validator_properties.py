"""Property test of the validator: any manifest, generated or mutated from the examples, is
either a valid resource or refused with one line per problem naming the field, never a
traceback."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradewind.api import ManifestError, dump_resource, parse_resource

EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted(Path("examples").glob("*.yaml"))]
SOURCE = "m.yaml"
PROBLEM = re.compile(rf"^{re.escape(SOURCE)}: \S[^\n]*: [^\n]+$")
"""`m.yaml: spec.model.cnn.filters[0]: what is wrong (got ...)`: the source, the field path."""

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "s3://other-bucket/x", "cuda", "ppo", ".nan", "1e309", "-1", "0"]),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _paths(child, (*prefix, i))
    return out


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=12))] = draw(values)
        elif action == "duplicate" and isinstance(parent[path[-1]], list):
            parent[path[-1]] += copy.deepcopy(parent[path[-1]])
    return doc


def _parses_or_names_the_field(doc: Any) -> None:
    try:
        resource = parse_resource(doc, SOURCE)
    except ManifestError as exc:
        assert exc.problems, "a refusal names at least one problem"
        for problem in exc.problems:
            assert PROBLEM.match(problem), f"not one line naming the field: {problem!r}"
        return
    # A valid resource survives its own dump: what `tradewind validate --show` prints and
    # the ConfigMap the trainer reads are valid too.
    dumped = dump_resource(resource)
    assert dump_resource(parse_resource(yaml.safe_load(dumped), SOURCE)) == dumped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_mutated_examples_are_valid_or_refused_naming_the_field(doc: Any) -> None:
    _parses_or_names_the_field(doc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {
            "apiVersion": st.just("tradewind.dev/v1alpha1"),
            "kind": st.sampled_from(["TrainingRun", "RLRun", "Sweep"]),
            "metadata": st.fixed_dictionaries({"name": st.text(max_size=70)}),
            "spec": values,
        }
    )
)
def test_generated_manifests_are_valid_or_refused_naming_the_field(doc: Any) -> None:
    _parses_or_names_the_field(doc)
