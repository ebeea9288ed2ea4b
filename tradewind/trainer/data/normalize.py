"""Per-feature scaling, fitted on the training split only and checkpointed with the model."""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from tradewind.trainer.data.errors import DataError

NormalizationMethod = Literal["robust", "zscore", "minmax", "none"]


class Normalizer:
    """(x - center) / scale per feature column.

    robust: median and interquartile range; zscore: mean and standard deviation; minmax:
    minimum and range (training data maps to [0, 1]); none: identity. A column that is
    constant on the training data gets scale 1, so it is centred rather than blown up."""

    def __init__(self, method: NormalizationMethod = "robust") -> None:
        if method not in get_args(NormalizationMethod):
            raise DataError(f"unknown normalization {method!r}")
        self.method: NormalizationMethod = method
        self.center: npt.NDArray[np.float64] | None = None
        self.scale: npt.NDArray[np.float64] | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` or `load_state_dict` has set the statistics."""
        return self.center is not None and self.scale is not None

    def fit(self, values: npt.NDArray[np.floating[Any]]) -> Normalizer:
        """Learn the statistics of each column of the (row, feature) training `values`."""
        if values.ndim != 2 or len(values) == 0:
            raise DataError("the normaliser needs a non-empty (row, feature) array to fit")
        data = values.astype(np.float64)
        if self.method == "robust":
            q25, median, q75 = np.percentile(data, [25, 50, 75], axis=0)
            center, scale = median, q75 - q25
        elif self.method == "zscore":
            center, scale = data.mean(axis=0), data.std(axis=0)
        elif self.method == "minmax":
            center = data.min(axis=0)
            scale = data.max(axis=0) - center
        else:
            center, scale = np.zeros(data.shape[1]), np.ones(data.shape[1])
        self.center = center
        self.scale = np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Scaled float32 copy of `values` (row, feature)."""
        if self.center is None or self.scale is None:
            raise RuntimeError("Normalizer.transform called before fit or load_state_dict")
        scaled = values.astype(np.float32)  # a copy; float32 halves the memory traffic
        scaled -= self.center.astype(np.float32)
        scaled /= self.scale.astype(np.float32)
        return scaled

    def state_dict(self) -> dict[str, Any]:
        """Method and statistics as plain lists, so `torch.load(weights_only=True)` and JSON
        can both read them back."""
        return {
            "method": self.method,
            "center": None if self.center is None else self.center.tolist(),
            "scale": None if self.scale is None else self.scale.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        method = state["method"]
        if method not in get_args(NormalizationMethod):
            raise DataError(f"unknown normalization {method!r} in the saved state")
        self.method = method
        center, scale = state["center"], state["scale"]
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
