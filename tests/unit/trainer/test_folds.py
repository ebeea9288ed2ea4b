from dataclasses import replace

import numpy as np
import pytest

from tradewind.api.common import SyntheticData
from tradewind.api.training import TrainingData
from tradewind.trainer.data.dataset import (
    SupervisedDataset,
    build_dataset,
    dataset_from_splits,
    purge_gap,
)
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.windows import (
    SplitIndices,
    expanding_window_folds,
    walk_forward_folds,
)
from tradewind.trainer.folds import carve_validation, fold_datasets, pool_bars


def _spec(**overrides: object) -> TrainingData:
    settings: dict[str, object] = {
        "source": "synthetic",
        "synthetic": SyntheticData(num_symbols=2, num_bars=400, seed=1),
        "lookback_window": 10,
        "prediction_horizon": 3,
        "interval": "1d",
    }
    settings.update(overrides)
    return TrainingData.model_validate(settings)


def _data(tmp_path, spec: TrainingData) -> SupervisedDataset:  # type: ignore[no-untyped-def]
    return build_dataset(spec, cache_dir=tmp_path)


def _position(bars: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.searchsorted(bars, times)


def test_each_fold_fits_validates_and_tests_in_order_with_purge_gaps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(split={"embargo": 2})
    data = _data(tmp_path, spec)
    gap = purge_gap(spec)
    assert gap == 3 + 1 + 2
    folds = list(fold_datasets(data, spec, expanding_window_folds(len(pool_bars(data)), 3, gap)))
    assert len(folds) == 3
    sizes = []
    for _, fold_data, bars in folds:
        fit, val, test = (
            _position(bars, s.timestamps)
            for s in (fold_data.train, fold_data.validation, fold_data.test)
        )
        assert len(val) > 0 and len(test) > 0
        # fit < validation < test, each block `gap` bars after the previous one ends
        assert val.min() - fit.max() > gap
        assert test.min() - val.max() > gap
        # the test block is never what validation (early stopping, checkpoints) reads
        assert not np.intersect1d(fold_data.validation.timestamps, fold_data.test.timestamps).size
        sizes.append(len(fold_data.train))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # the window expands


def test_each_fold_refits_the_normaliser_on_its_own_fit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec()
    data = _data(tmp_path, spec)
    folds = list(fold_datasets(data, spec, expanding_window_folds(len(pool_bars(data)), 3, 4)))
    states = [fold_data.normalizer.state_dict() for _, fold_data, _ in folds]
    assert all(str(s) != str(data.normalizer.state_dict()) for s in states)
    assert str(states[0]) != str(states[-1])
    # The first fold's normaliser is what fitting on its fit rows alone gives: changing
    # every bar after its fit period (its validation and test blocks too) changes nothing.
    first = folds[0][1]
    assert first.samples is not None
    table = first.samples.table
    last_fit = first.train.timestamps.max()
    later = table.timestamps > last_fit
    changed_values = table.values.copy()
    changed_values[later] *= 10.0
    assert data.samples is not None
    changed_samples = replace(data.samples, table=replace(table, values=changed_values))
    refit = dataset_from_splits(changed_samples, _fold_splits(first, data.samples.times), spec)
    assert str(refit.normalizer.state_dict()) == str(first.normalizer.state_dict())


def _fold_splits(fold_data: SupervisedDataset, times: list[np.ndarray]) -> list[SplitIndices]:
    blocks = [
        fold_data.train.timestamps,
        fold_data.validation.timestamps,
        fold_data.test.timestamps,
    ]
    return [SplitIndices(*(np.flatnonzero(np.isin(t, b)) for b in blocks)) for t in times]


def test_walk_forward_windows_roll(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec()
    data = _data(tmp_path, spec)
    folds = list(
        fold_datasets(data, spec, walk_forward_folds(len(pool_bars(data)), 100, 50, gap=4))
    )
    starts = [f.train.timestamps.min() for _, f, _ in folds]
    assert len(folds) >= 3 and starts == sorted(starts) and len(set(starts)) == len(starts)
    assert data.test.timestamps.min() > max(
        f.test.timestamps.max() for _, f, _ in folds
    )  # test split untouched


def test_no_validation_share_means_no_fold_validation() -> None:
    train = np.arange(50)
    fit, val = carve_validation(train, _spec(split={"validation": 0.0, "test": 0.1}))
    assert val.size == 0 and np.array_equal(fit, train)


def test_a_fold_too_short_for_its_validation_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="walkForwardWindow"):
        carve_validation(np.arange(5), _spec())
