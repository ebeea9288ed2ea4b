"""An extension's model: the factory its entry point names, called with the window shape,
the heads and its validated params; what it returns must be a TradingModel."""

from __future__ import annotations

from tradewind.api.training import ModelSpec
from tradewind.extensions import ExtensionError, ParamsError, registry
from tradewind.trainer.models.base import TradingModel


def build_extension_model(spec: ModelSpec, n_features: int, lookback: int) -> TradingModel:
    """`factory(n_features=, lookback=, heads=, dropout=, params=)` of the extension
    `spec.type`; a name not registered, params refused or a factory breaking the contract
    is a SpecNotRunnableError (exit 64: restarting cannot help)."""
    from tradewind.trainer.entrypoint import SpecNotRunnableError

    extensions = registry()
    try:
        factory = extensions.load("model", spec.type)
        params = extensions.parse_params("model", spec.type, spec.params)
    except ParamsError as exc:
        raise SpecNotRunnableError(f"model.params{exc.path}: {exc.message}") from exc
    except ExtensionError as exc:
        raise SpecNotRunnableError(f"model.type: {exc}") from exc
    model = factory(
        n_features=n_features,
        lookback=lookback,
        heads=spec.heads,
        dropout=spec.dropout,
        params=params,
    )
    if not isinstance(model, TradingModel):
        raise SpecNotRunnableError(
            f"model.type: the factory of {spec.type} returned {type(model).__name__}, not a "
            "tradewind.trainer.models.TradingModel (subclass it and implement _encode)"
        )
    return model
