"""CEL rules that see the models' defaults without the CRD storing them.

The models' defaults are not schema defaults (a stored run stays as written: 2.5 KB instead
of 5.9 KB, and every write of it is 2-2.5x cheaper for the apiserver). A rule written against
the defaulted model (`self.device == 'cuda'`) would then fail on a run that leaves `device`
out, so the CRD gets each rule with the defaults spelled in: a field with a default reads as
`(has(self.device) ? self.device : 'cpu')`, and `has()` of a field answers as it would on
the defaulted object. The models evaluate the rules as written, on the defaulted dump; the
two agree (tests/unit/api/test_cel_defaults.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?u?)|(?P<ws>\s+)|(?P<op>.)""",
    re.DOTALL,
)
_MACROS = {"all", "exists", "exists_one", "map", "filter"}


class DefaultsRewriteError(ValueError):
    """A rule reads a default in a way the rewrite cannot express."""


@dataclass(frozen=True)
class _Segment:
    text: str  # ".name" or "[k]"
    schema: dict[str, Any] | None  # the selected node's schema, None where unknown

    @property
    def has_default(self) -> bool:
        """A field with a schema default (a map's key has none: it is always there)."""
        return self.text.startswith(".") and "default" in (self.schema or {})

    @property
    def default(self) -> Any:
        return (self.schema or {}).get("default") if self.has_default else None


def _tokens(rule: str) -> list[str]:
    return [m.group() for m in _TOKEN.finditer(rule)]


def literal(value: Any, schema: dict[str, Any] | None) -> str:
    """A JSON value as a CEL literal of the schema's type (a `number` is a double)."""
    kind = (schema or {}).get("type")
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "number" and isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        items = (schema or {}).get("items")
        return "[" + ", ".join(literal(v, items) for v in value) + "]"
    if isinstance(value, dict):
        extra = (schema or {}).get("additionalProperties")
        props = (schema or {}).get("properties") or {}
        fields = (
            f"{literal(k, None)}: {literal(v, props.get(k, extra))}" for k, v in value.items()
        )
        return "{" + ", ".join(fields) + "}"
    raise DefaultsRewriteError(f"no CEL literal for the default {json.dumps(value)}")


class _Rewriter:
    def __init__(self, rule: str, schema: dict[str, Any]) -> None:
        self.tokens = _tokens(rule)
        self.roots: dict[str, dict[str, Any] | None] = {"self": schema}
        self.pos = 0
        self.rule = rule

    def run(self) -> str:
        out: list[str] = []
        while self.pos < len(self.tokens):
            out.append(self._next())
        return "".join(out)

    def _ahead(self, count: int) -> list[str]:
        """The next `count` tokens that are not whitespace ("" past the end)."""
        found = [t for t in self.tokens[self.pos :] if not t.isspace()][:count]
        return found + [""] * (count - len(found))

    def _peek(self, offset: int = 0) -> str:
        return self._ahead(offset + 1)[offset]

    def _skip_ws(self) -> None:
        while self.pos < len(self.tokens) and self.tokens[self.pos].isspace():
            self.pos += 1

    def _take(self) -> str:
        self._skip_ws()
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _next(self) -> str:
        token = self.tokens[self.pos]
        previous = next((t for t in reversed(self.tokens[: self.pos]) if not t.isspace()), "")
        if token == "has" and self._peek(1) == "(" and previous != ".":
            return self._has()
        if token in self.roots and previous != ".":
            return self._chain_value()
        self.pos += 1
        return token

    def _chain(self) -> tuple[str, list[_Segment]]:
        """The select chain at the cursor: its root and its field and map-key segments."""
        root = self._take()
        schema = self.roots[root]
        segments: list[_Segment] = []
        while True:
            if self._peek() == "." and self._is_field(self._field_after_dot()):
                self._take()
                name = self._take()
                props = (schema or {}).get("properties", {})
                child = props.get(name)
                segments.append(_Segment(f".{name}", child))
                schema = child
            elif self._peek() == "[" and self._bracket_key() is not None:
                key = self._bracket_key()
                for _ in range(3):
                    self._take()
                extra = (schema or {}).get("additionalProperties")
                schema = extra if isinstance(extra, dict) else None
                segments.append(_Segment(f"[{key}]", schema))
            else:
                break
        self._bind_macro_variable(schema)
        return root, segments

    def _field_after_dot(self) -> tuple[str, str]:
        _, name, after = self._ahead(3)
        return name, after

    @staticmethod
    def _is_field(name_and_next: tuple[str, str]) -> bool:
        name, after = name_and_next
        return bool(re.fullmatch(r"[A-Za-z_]\w*", name)) and after != "("

    def _bracket_key(self) -> str | None:
        key, close = self._peek(1), self._peek(2)
        if re.fullmatch(r"[A-Za-z_]\w*", key) and close == "]" and key in self.roots:
            return key
        return None

    def _bind_macro_variable(self, schema: dict[str, Any] | None) -> None:
        """`list.all(x, ...)`: x is an item of the list (a map's key: a string)."""
        if self._peek() != "." or self._field_after_dot()[1] != "(":
            return
        found = self._ahead(5)
        if found[1] not in _MACROS or found[4] != ",":
            return
        variable = found[3]
        item = (schema or {}).get("items") if (schema or {}).get("type") == "array" else None
        bound = self.roots.get(variable, item)
        if variable in self.roots and bound != item:
            raise DefaultsRewriteError(
                f"{self.rule!r}: {variable} names two different things; rename one"
            )
        self.roots[variable] = item

    @staticmethod
    def _last_required(segments: list[_Segment]) -> int:
        """Index after the last segment without a default: up to it the path must exist,
        as the defaulted object has it only if the input does."""
        last = 0
        for i, seg in enumerate(segments):
            if not seg.has_default:
                last = i + 1
        return last

    def _check_consistent(self, segments: list[_Segment], start: int) -> None:
        for parent, child in zip(segments[start:], segments[start + 1 :], strict=False):
            nested = parent.default if isinstance(parent.default, dict) else {}
            name = child.text[1:]
            if nested.get(name, None) != child.default:
                raise DefaultsRewriteError(
                    f"{self.rule!r}: the default of {parent.text[1:]} has {name}="
                    f"{nested.get(name)!r}, not {name}'s own default {child.default!r}"
                )

    @staticmethod
    def _guards(root: str, segments: list[_Segment], start: int, stop: int) -> list[str]:
        """has() of each path from root through segments[start:stop], shortest first."""
        return [
            "has(" + root + "".join(s.text for s in segments[: i + 1]) + ")"
            for i in range(start, stop)
        ]

    def _chain_value(self) -> str:
        root, segments = self._chain()
        raw = root + "".join(s.text for s in segments)
        start = self._last_required(segments)
        if start == len(segments):
            return raw
        self._check_consistent(segments, start)
        leaf = segments[-1]
        guard = " && ".join(self._guards(root, segments, start, len(segments)))
        try:
            default = literal(leaf.default, leaf.schema)
        except DefaultsRewriteError as e:
            raise DefaultsRewriteError(f"{self.rule!r}: {e}") from None
        macro = self._macro_call()
        if macro is None:
            return f"({guard} ? {raw} : {default})"
        # A ternary of the list and a literal would lose the list's maxItems (the apiserver
        # refuses the rule's cost) and its element type: apply the macro in each branch.
        name, call = macro
        if leaf.default in ([], {}):
            empty = {"all": "true", "exists": "false", "exists_one": "false"}.get(name, "[]")
            return f"({guard} ? {raw}{call} : {empty})"
        return f"({guard} ? {raw}{call} : {default}{call})"

    def _macro_call(self) -> tuple[str, str] | None:
        """`.all(v, body)` at the cursor, consumed, with the body rewritten."""
        dot, name, paren, variable, comma = self._ahead(5)
        if dot != "." or name not in _MACROS or paren != "(" or comma != ",":
            return None
        for _ in range(5):
            self._take()
        body: list[str] = []
        depth = 0
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            if token == ")" and depth == 0:
                self.pos += 1
                return name, f".{name}({variable}, {''.join(body).strip()})"
            depth += {"(": 1, ")": -1}.get(token, 0)
            body.append(self._next())
        raise DefaultsRewriteError(f"{self.rule!r}: unbalanced parentheses")

    def _has(self) -> str:
        self._take()  # has
        self._take()  # (
        if self._peek() not in self.roots:
            raise DefaultsRewriteError(f"{self.rule!r}: has() of something other than a field")
        root, segments = self._chain()
        if self._take() != ")" or not segments:
            raise DefaultsRewriteError(f"{self.rule!r}: has() must test one field")
        raw = root + "".join(s.text for s in segments)
        if segments[-1].has_default:
            return "true"  # the defaulted object always has it
        start = self._last_required(segments[:-1])
        self._check_consistent(segments, start)
        guards = self._guards(root, segments, start, len(segments) - 1)
        return "(" + " && ".join([*guards, f"has({raw})"]) + ")" if guards else f"has({raw})"


def with_defaults(rule: str, schema: dict[str, Any]) -> str:
    """`rule`, attached to the node `schema` (which still carries its defaults), rewritten to
    read each default where the object leaves the field out."""
    return _Rewriter(rule, schema).run()
