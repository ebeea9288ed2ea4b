"""Extensions: models, features, data sources and RL environments from the user's package.

A package registers them as Python entry points, named `<package>.<name>` (a dot: the
built-ins have none), in the groups of GROUPS:

    [project.entry-points."tradewind.models"]
    "tw_example.tiny_mlp" = "tw_example.models:tiny_mlp"

and a manifest chooses them by that name (`model.type`, `data.features`, `data.source`).
The operator never has the package: the API accepts any dotted name there, and checks it
fully only where a validation context from `validation_context()` is given (the trainer,
`tradewind validate`, `tradewind run -f`). Entry points are listed without importing
anything; one is loaded (its module imported) only when a manifest names it.

The contracts (docs/extensions.md has examples):

- model: `factory(*, n_features, lookback, heads, dropout, params) -> TradingModel`;
  `params` is an instance of the factory's `params_model` (see `model()`), or `{}`.
- feature: `feature(bars) -> Series | DataFrame`; `bars` is one symbol's OHLCV frame, oldest
  first, indexed by timestamp; the result has one row per bar, each computed from bars <= t.
- data source: `source(*, seed) -> DataFrame` with columns symbol, timestamp, open, high,
  low, close, volume (one row per bar).
- environment: `factory(*, market, spec, seed, random_start, params) -> TradingEnvironment`,
  a subclass of Tradewind's that changes only its hooks (`shape_reward`,
  `shape_observation`); see `tradewind.trainer.rl.extension`.

This module imports neither torch nor pandas.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from tradewind.api.common import EXTENSION_NAME

log = logging.getLogger(__name__)

Kind = Literal["model", "feature", "data_source", "environment"]
GROUPS: dict[Kind, str] = {
    "model": "tradewind.models",
    "feature": "tradewind.features",
    "data_source": "tradewind.data_sources",
    "environment": "tradewind.environments",
}
"""The entry point group of each kind of extension."""
NAME = re.compile(f"^{EXTENSION_NAME}$")
"""An extension's name: `<package>.<name>`, lower case, at least one dot."""

F = TypeVar("F", bound=Callable[..., Any])


class ExtensionError(ValueError):
    """An extension that is not registered, cannot be loaded or breaks its contract."""


def is_extension(name: str) -> bool:
    """Whether a manifest's name means an extension, `<package>.<name>` (built-in names
    have no dot; URIs such as `file://bars.csv` do not match)."""
    return NAME.match(name) is not None


# --- marking the callables an entry point names -------------------------------------------


def model(*, params: type[BaseModel] | None = None) -> Callable[[F], F]:
    """Mark a model factory; `params` is the pydantic model that `model.params` of a
    manifest is validated against (unset: the model takes no params). It marks an
    environment factory the same way (`environment.params`): `environment = model`."""

    def mark(factory: F) -> F:
        factory.params_model = params  # type: ignore[attr-defined]
        return factory

    return mark


environment = model
"""Mark an environment factory; `params` is the pydantic model of `environment.params`."""


def feature(*, columns: tuple[str, ...] | None = None) -> Callable[[F], F]:
    """Mark a feature; `columns` names the columns of the DataFrame it returns (unset: it
    returns a Series, one column named after the feature)."""

    def mark(function: F) -> F:
        function.columns = columns  # type: ignore[attr-defined]
        return function

    return mark


# --- the registry -------------------------------------------------------------------------


class Registry:
    """The extensions installed in this environment, by kind and name."""

    def __init__(self, entry_points: importlib.metadata.EntryPoints | None = None) -> None:
        found = entry_points if entry_points is not None else importlib.metadata.entry_points()
        self._points: dict[Kind, dict[str, importlib.metadata.EntryPoint]] = {}
        for kind, group in GROUPS.items():
            points: dict[str, importlib.metadata.EntryPoint] = {}
            for point in found.select(group=group):
                if not NAME.match(point.name):
                    log.warning(
                        "ignoring entry point %r of group %s: an extension is named "
                        "<package>.<name> (lower case, with a dot)",
                        point.name,
                        group,
                    )
                    continue
                points.setdefault(point.name, point)
            self._points[kind] = points
        self._loaded: dict[tuple[Kind, str], Any] = {}

    def names(self, kind: Kind) -> list[str]:
        """Registered names of a kind, sorted (nothing is imported)."""
        return sorted(self._points[kind])

    def describe(self, kind: Kind) -> str:
        """'a, b' or 'none', for error messages."""
        return ", ".join(self.names(kind)) or "none"

    def load(self, kind: Kind, name: str) -> Any:
        """The object the entry point names (its module imported on first use)."""
        key = (kind, name)
        if key not in self._loaded:
            point = self._points[kind].get(name)
            if point is None:
                package = name.split(".")[0]
                known = any(n.split(".")[0] == package for p in self._points.values() for n in p)
                hint = "" if known else f" (no extension of {package!r} is installed here)"
                raise ExtensionError(
                    f"{name!r} is not a registered {kind.replace('_', ' ')} (entry point group "
                    f"{GROUPS[kind]}); registered: {self.describe(kind)}{hint}"
                )
            try:
                self._loaded[key] = point.load()
            except Exception as exc:  # the user's module: any import error
                said = " ".join(str(exc).split())  # one line
                raise ExtensionError(
                    f"{name!r} ({point.value}) cannot be loaded: {type(exc).__name__}: {said}"
                ) from exc
        return self._loaded[key]

    def distribution(self, kind: Kind, name: str) -> str:
        """'<distribution> <version>' of the package that registers the extension."""
        point = self._points[kind].get(name)
        dist = getattr(point, "dist", None)
        return f"{dist.name} {dist.version}" if dist is not None else "unknown"

    def params_model(self, kind: Kind, name: str) -> type[BaseModel] | None:
        """The pydantic model of the extension's params, or None if it takes none."""
        params = getattr(self.load(kind, name), "params_model", None)
        if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise ExtensionError(f"{name!r}: params_model must be a pydantic BaseModel class")
        return params

    def parse_params(self, kind: Kind, name: str, params: dict[str, Any]) -> Any:
        """`params` validated by the extension's params model (`{}` when it has none);
        ParamsError names the first bad field."""
        model = self.params_model(kind, name)
        if model is None:
            if params:
                raise ParamsError("", f"{name} takes no params (it declares no params_model)")
            return {}
        try:
            return model.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            message = first["msg"]
            if first["type"] != "missing":
                message += f" (got {first['input']!r})"
            raise ParamsError(where, message) from None

    def problem(
        self, kind: Kind, name: str, params: dict[str, Any] | None = None
    ) -> tuple[str | None, str] | None:
        """What is wrong with choosing `name` (with `params`): None if nothing, else (None,
        message) for the name itself or (path inside params, message) for its params. The
        API's validators call this when the validation context holds a registry."""
        try:
            self.load(kind, name)
            if params is not None:
                self.parse_params(kind, name, params)
        except ParamsError as exc:
            return exc.path, exc.message
        except ExtensionError as exc:
            return None, str(exc)
        return None


class ParamsError(ExtensionError):
    """An extension's params that its params model refuses, at `path` (`.hidden`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@functools.cache
def registry() -> Registry:
    """The installed extensions (entry points read once per process)."""
    return Registry()


def validation_context() -> dict[str, Any]:
    """The pydantic validation context that makes the API check extension names and params
    against the installed extensions: `load_resources(path, context=validation_context())`."""
    return {"extensions": registry()}
