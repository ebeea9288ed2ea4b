import numpy as np

from tradewind.api.common import SyntheticData
from tradewind.api.training import TrainingData
from tradewind.trainer.data.dataset import build_dataset
from tradewind.trainer.data.windows import expanding_window_folds, walk_forward_folds
from tradewind.trainer.folds import fold_datasets


def _data(tmp_path):  # type: ignore[no-untyped-def]
    spec = TrainingData(
        source="synthetic", synthetic=SyntheticData(num_symbols=2, num_bars=400, seed=1),
        lookback_window=10, prediction_horizon=3, interval="1d",
    )  # fmt: skip
    return build_dataset(spec, cache_dir=tmp_path)


def test_each_fold_fits_on_the_past_and_tests_on_the_next_block(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _data(tmp_path)
    n_bars = len(np.unique(np.concatenate([data.train.timestamps, data.validation.timestamps])))
    folds = list(fold_datasets(data, expanding_window_folds(n_bars, 3, gap=3)))
    assert len(folds) == 3
    sizes = []
    for _, fold_data, bars in folds:
        assert fold_data.train.timestamps.max() < fold_data.test.timestamps.min()
        # the gap: no training target (horizon 3 bars ahead) reaches the test block
        last_fit = np.searchsorted(bars, fold_data.train.timestamps.max())
        first_test = np.searchsorted(bars, fold_data.test.timestamps.min())
        assert first_test - last_fit > 3
        assert fold_data.validation is fold_data.test
        sizes.append(len(fold_data.train))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # the window expands
    assert len(folds[0][1].test.timestamps) > 0


def test_walk_forward_windows_roll(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _data(tmp_path)
    n_bars = len(np.unique(np.concatenate([data.train.timestamps, data.validation.timestamps])))
    folds = list(fold_datasets(data, walk_forward_folds(n_bars, window=100, step=50, gap=3)))
    starts = [f.train.timestamps.min() for _, f, _ in folds]
    assert len(folds) >= 3 and starts == sorted(starts) and len(set(starts)) == len(starts)
    assert data.test.timestamps.min() > max(
        f.test.timestamps.max() for _, f, _ in folds
    )  # test split untouched
