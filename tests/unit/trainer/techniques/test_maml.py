"""MAML's few-shot adaptation at evaluation: which samples adapt and which are scored, and an
adaptation that fits the new task without touching the meta-learned model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from tradewind.api.training import HeadsSpec, LossWeights, MetaLearningSpec, ModelSpec
from tradewind.trainer.data.dataset import SupervisedSplit
from tradewind.trainer.losses import MultiTaskLoss
from tradewind.trainer.models import TradingModel, build_model
from tradewind.trainer.techniques.maml import adapt, adaptation_tasks

B, T, F = 16, 10, 3
LOSS = MultiTaskLoss(LossWeights(), HeadsSpec())


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> TradingModel:
    torch.manual_seed(0)
    spec = ModelSpec.model_validate(
        {
            "cnn": {"layers": [{"outChannels": 4, "kernelSize": 3}], "attentionHeads": 2},
            "lstm": {"hiddenSize": 4, "numLayers": 1},
            "fusion": {"dim": 8},
        }
    )
    return build_model(spec, F, T)


def _task(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, T, F, generator=g),
        "y_class": torch.randint(0, 3, (B,), generator=g),
        "y_ret": torch.randn(B, generator=g),
    }


def _loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float(LOSS(model(batch["x"]), batch["y_class"], batch["y_ret"])[0])


def test_adaptation_lowers_the_support_loss_and_leaves_the_meta_model_alone() -> None:
    model, support = _model(), _task(1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    spec = MetaLearningSpec(inner_learning_rate=0.05, inner_steps=1, adaptation_steps=5)
    adapted = adapt(model, LOSS, support, spec)
    assert _loss(adapted, support) < _loss(model, support)
    assert adapted is not model and not adapted.training
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
        assert p.grad is None
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0)
    moved = [
        name for name, p in adapted.named_parameters() if not torch.equal(p.detach(), before[name])
    ]
    assert moved


def test_adaptation_steps_default_to_the_inner_steps() -> None:
    model, support = _model(), _task(2)
    once = adapt(model, LOSS, support, MetaLearningSpec(inner_steps=1))
    thrice = adapt(model, LOSS, support, MetaLearningSpec(inner_steps=3))
    explicit = adapt(model, LOSS, support, MetaLearningSpec(inner_steps=1, adaptation_steps=3))
    for a, b in zip(thrice.parameters(), explicit.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert any(
        not torch.equal(a, b) for a, b in zip(once.parameters(), thrice.parameters(), strict=True)
    )


def _split(symbol_ids: list[int], days: list[int]) -> SupervisedSplit:
    n = len(symbol_ids)
    return SupervisedSplit(
        windows=np.zeros((n, 2, 1), np.float32),
        window_index=np.arange(n, dtype=np.int64),
        labels=np.ones(n, np.int64),
        forward_returns=np.zeros(n, np.float32),
        volatility=np.zeros(n, np.float32),
        regimes=np.full(n, -1, np.int8),
        symbol_ids=np.array(symbol_ids, np.int64),
        timestamps=np.datetime64("2024-01-01") + np.array(days).astype("timedelta64[D]"),
    )


def test_scored_samples_exclude_each_symbols_first_bars_and_the_purge_gap() -> None:
    # two symbols interleaved and out of time order; symbol 1 has a missing bar (day 3)
    days0, days1 = list(range(12)), [d for d in range(12) if d != 3]
    symbols = [0] * len(days0) + [1] * len(days1)
    order = np.random.default_rng(0).permutation(len(symbols))
    split = _split([symbols[i] for i in order], [(days0 + days1)[i] for i in order])
    tasks = adaptation_tasks(split, bars=4, gap=3)
    assert [t.symbol for t in tasks] == [0, 1]
    day = (split.timestamps - np.datetime64("2024-01-01")).astype(int)
    for task, days in zip(tasks, (days0, days1), strict=True):
        assert (split.symbol_ids[task.support] == task.symbol).all()
        assert (split.symbol_ids[task.scored] == task.symbol).all()
        assert day[task.support].tolist() == days[:4]
        assert day[task.scored].tolist() == days[4 + 3 :]
        assert day[task.scored].min() > day[task.support].max() + 3


def test_symbols_with_nothing_left_to_score_are_left_out() -> None:
    split = _split([0] * 10 + [1] * 5, list(range(10)) + list(range(5)))
    assert [t.symbol for t in adaptation_tasks(split, bars=3, gap=2)] == [0]
    with pytest.raises(ValueError):
        adaptation_tasks(split, bars=0, gap=2)
