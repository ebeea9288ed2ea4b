"""End to end, no look-ahead: changing the bars after time t changes none of the features,
the market regimes read from the bars, the labels in use (targets fully known by t) or the
model's predictions at or before t."""

from pathlib import Path

import numpy as np
import torch

from tradewind.api.common import SyntheticData
from tradewind.api.training import ModelSpec, TrainingData
from tradewind.trainer.data.dataset import SupervisedSplit, build_dataset
from tradewind.trainer.data.synthetic import generate_market
from tradewind.trainer.models import build_model


def _data(path: Path) -> TrainingData:
    return TrainingData(
        source=path.as_uri(), lookback_window=12, prediction_horizon=3, interval="1d"
    )


def _by_time(split: SupervisedSplit, symbol: int) -> dict[np.datetime64, int]:
    return {
        t: i
        for i, (t, s) in enumerate(zip(split.timestamps, split.symbol_ids, strict=True))
        if s == symbol
    }


def test_future_bars_change_nothing_at_or_before_t(tmp_path: Path) -> None:
    bars = generate_market(
        SyntheticData(num_symbols=2, num_bars=600, seed=3), interval="1d"
    ).to_frame()
    bars = bars.drop(columns=[c for c in bars.columns if c == "regime"])
    original, changed = tmp_path / "a.csv", tmp_path / "b.csv"
    bars.to_csv(original, index=False)
    times = np.sort(bars["timestamp"].unique())
    t = times[int(len(times) * 0.95)]  # inside the test split: the normaliser never sees it
    future = bars["timestamp"] > t
    shocked = bars.copy()
    for column in ("open", "high", "low", "close"):
        shocked.loc[future, column] *= 3.0
    shocked.loc[future, "volume"] *= 10
    shocked.to_csv(changed, index=False)

    a = build_dataset(_data(original), cache_dir=tmp_path / "cache-a")
    b = build_dataset(_data(changed), cache_dir=tmp_path / "cache-b")
    torch.manual_seed(0)
    model = build_model(ModelSpec(), a.num_features, a.lookback_window).eval()
    horizon = a.prediction_horizon
    checked = 0
    for symbol in range(len(a.symbols)):
        times_a, times_b = _by_time(a.test, symbol), _by_time(b.test, symbol)
        known = sorted(ts for ts in times_a if ts <= t)
        assert known, "no test samples before t"
        idx_a = np.array([times_a[ts] for ts in known])
        idx_b = np.array([times_b[ts] for ts in known])
        np.testing.assert_array_equal(a.test.inputs(idx_a), b.test.inputs(idx_b))  # features
        np.testing.assert_array_equal(a.test.regimes[idx_a], b.test.regimes[idx_b])
        assert (a.test.regimes[idx_a] >= 0).all()  # read from the bars: this data has none
        bar = {ts: k for k, ts in enumerate(times)}
        # a target reads the fill bar after the sample and `horizon` more
        in_use = [k for k, ts in enumerate(known) if bar[ts] + horizon + 1 <= bar[t]]
        np.testing.assert_array_equal(a.test.labels[idx_a[in_use]], b.test.labels[idx_b[in_use]])
        np.testing.assert_array_equal(
            a.test.forward_returns[idx_a[in_use]], b.test.forward_returns[idx_b[in_use]]
        )
        with torch.no_grad():
            pa = model(torch.from_numpy(a.test.inputs(idx_a))).logits
            pb = model(torch.from_numpy(b.test.inputs(idx_b))).logits
        assert torch.equal(pa, pb)  # predictions
        checked += len(known)
        # and the shock is real: samples after t do differ
        later = [ts for ts in times_a if ts > t + np.timedelta64(20, "D")]
        if later:
            assert not np.array_equal(
                a.test.inputs([times_a[later[0]]]), b.test.inputs([times_b[later[0]]])
            )
    assert checked > 10
