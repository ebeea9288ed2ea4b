import json

import numpy as np
import pytest

from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.normalize import Normalizer

TRAIN = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [100.0, 5.0]])


def test_robust_uses_median_and_interquartile_range() -> None:
    normalizer = Normalizer("robust").fit(TRAIN)
    # Column 0: median 3, IQR 4 - 2 = 2; column 1 is constant: scale 1.
    np.testing.assert_allclose(normalizer.transform(np.array([[5.0, 6.0]])), [[1.0, 1.0]])


def test_zscore_and_minmax() -> None:
    zscore = Normalizer("zscore").fit(TRAIN).transform(TRAIN)
    np.testing.assert_allclose(zscore[:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(zscore[:, 0].std(), 1.0, rtol=1e-6)
    minmax = Normalizer("minmax").fit(TRAIN).transform(TRAIN)
    assert minmax[:, 0].min() == 0.0 and minmax[:, 0].max() == 1.0
    assert (minmax[:, 1] == 0.0).all()
    np.testing.assert_array_equal(Normalizer("none").fit(TRAIN).transform(TRAIN), TRAIN)


def test_transform_is_float32_and_needs_fitting() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        Normalizer().transform(TRAIN)
    assert Normalizer().fit(TRAIN).transform(TRAIN).dtype == np.float32


def test_state_dict_round_trips_through_json() -> None:
    fitted = Normalizer("zscore").fit(TRAIN)
    restored = Normalizer("none")
    restored.load_state_dict(json.loads(json.dumps(fitted.state_dict())))
    assert restored.method == "zscore" and restored.is_fitted
    np.testing.assert_array_equal(restored.transform(TRAIN), fitted.transform(TRAIN))


def test_unknown_method_is_refused() -> None:
    with pytest.raises(DataError, match="unknown normalization"):
        Normalizer("log")  # type: ignore[arg-type]
