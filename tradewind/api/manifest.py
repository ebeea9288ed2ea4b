"""Reading manifests: YAML documents -> resource models, with one-line errors per problem."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tradewind.api.resources import API_VERSION, KINDS, Resource
from tradewind.api.spec_paths import field_type, unwrap_optional


class ManifestError(ValueError):
    """A manifest that is not a valid Tradewind resource. `problems` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and (not part or not part.isprintable() or part != part.strip()):
            out += f"[{part!r}]"  # a key no one could read as written (blank, a newline)
        elif isinstance(part, int) or "." in part:
            out += f"[{part}]"
        elif part in KINDS and out.endswith("template"):
            continue  # the discriminated union's tag, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: ErrorDetails, model: type[Resource]) -> str:
    path = _format_loc(err["loc"])
    ctx = err.get("ctx") or {}
    field_path = ctx.get("field_path", "")
    if field_path:
        path = f"{path}{field_path}" if path else field_path.lstrip(".")
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown field{_allowed_fields(model, err['loc'][:-1])}"
    if err["type"] == "missing":
        return f"{path}: required field is missing"
    message = err["msg"]
    if err["type"] not in (
        "cel_rule",
        "search_path",
        "search_value",
        "hyperparameter",
        "grid_size",
        "extension",
    ):
        message += f" (got {err['input']!r})"
    return f"{path}: {message}"


def _allowed_fields(model: type[Resource], loc: tuple[int | str, ...]) -> str:
    """'; allowed: a, b, c' for the model at `loc`, or '' where it cannot be found."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or part in KINDS:
            continue
        try:
            current = unwrap_optional(field_type(current, str(part)))
        except Exception:
            return ""
        args = getattr(current, "__args__", ())
        if getattr(current, "__origin__", None) is list and args:
            current = unwrap_optional(args[0])
    fields = getattr(current, "model_fields", None)
    if not fields:
        return ""
    return "; allowed: " + ", ".join(sorted(f.alias or n for n, f in fields.items()))


def parse_resource(
    doc: Any, source: str = "<manifest>", context: dict[str, Any] | None = None
) -> Resource:
    """One YAML document (already parsed) -> its resource model, or ManifestError.

    `context` is the pydantic validation context: `tradewind.extensions.validation_context()`
    checks extension names and params against the installed packages."""
    if not isinstance(doc, dict):
        raise ManifestError(
            [f"{source}: the document must be a mapping with apiVersion, kind, metadata, spec"]
        )
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            [f"{source}: apiVersion: must be {API_VERSION} (got {doc.get('apiVersion')!r})"]
        )
    kind = doc.get("kind")
    model = KINDS.get(str(kind))
    if model is None:
        raise ManifestError([f"{source}: kind: must be one of {', '.join(KINDS)} (got {kind!r})"])
    try:
        return model.model_validate(doc, context=context)
    except ValidationError as exc:
        raise ManifestError([f"{source}: {_describe(e, model)}" for e in exc.errors()]) from None


def load_documents(path: Path) -> Iterator[Any]:
    """The non-empty YAML documents of a file ('-' reads stdin)."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read file: {exc.strerror}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([f"{path}: {where}not valid YAML: {problem}"]) from None
    if not docs:
        raise ManifestError([f"{path}: the file holds no YAML document"])
    yield from docs


def load_resources(path: Path, context: dict[str, Any] | None = None) -> list[Resource]:
    """Every resource in a manifest file; ManifestError lists every problem found. `context`
    as for parse_resource."""
    resources, problems = [], []
    docs = list(load_documents(path))
    for i, doc in enumerate(docs):
        source = str(path) if len(docs) == 1 else f"{path}#{i}"
        try:
            resources.append(parse_resource(doc, source, context))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return resources


def dump_resource(resource: Resource, *, full: bool = False) -> str:
    """YAML of a resource: as written (default) or with every default filled in."""
    data = resource.model_dump(
        mode="json", by_alias=True, exclude_unset=not full, exclude_none=True
    )
    return yaml.safe_dump(data, sort_keys=False)
