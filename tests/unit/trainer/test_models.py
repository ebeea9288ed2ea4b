from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from tradewind.api.training import HeadsSpec, LossWeights, ModelSpec, Seq2SeqSpec
from tradewind.trainer.losses import MultiTaskLoss
from tradewind.trainer.models import (
    AttentionLSTM,
    CNNModel,
    HybridCNNLSTM,
    LSTMModel,
    TradingModel,
    build_model,
)

B, T, F = 4, 12, 5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (more spin-wait on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TYPES = ["cnn", "lstm", "attention_lstm", "hybrid"]


def tiny_spec(model_type: str = "hybrid", **overrides: Any) -> ModelSpec:
    """A small `model_type` model; `overrides` merge into its camelCase sections."""
    layers = [{"outChannels": 4, "kernelSize": 3}, {"outChannels": 4, "kernelSize": 5}]
    raw: dict[str, Any] = {
        "type": model_type,
        "cnn": {"layers": layers, "attentionHeads": 2},
        "lstm": {"hiddenSize": 4, "numLayers": 2, "attentionHeads": 2},
        "fusion": {"dim": 8, "heads": 2},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    return ModelSpec.model_validate(raw)


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, F, generator=torch.Generator().manual_seed(seed))


HEADS = [
    {"regression": False, "uncertainty": False},
    {"regression": True, "uncertainty": False},
    {"regression": True, "uncertainty": True, "numClasses": 2},
]


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("model_type", TYPES)
def test_output_shapes_for_every_type_and_head_combination(
    model_type: str, heads: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(model_type, heads=heads)
    out = build_model(spec, F, T)(batch())
    assert out.logits.shape == (B, spec.heads.num_classes)
    assert (out.ret is not None) == spec.heads.regression
    assert (out.log_var is not None) == spec.heads.uncertainty
    for value in (out.ret, out.log_var):
        assert value is None or value.shape == (B,)
    assert out.sequence is None


def test_build_model_dispatches_on_type() -> None:
    classes = [CNNModel, LSTMModel, AttentionLSTM, HybridCNNLSTM]
    for model_type, cls in zip(TYPES, classes, strict=True):
        model = build_model(tiny_spec(model_type), F, T)
        assert type(model) is cls
        assert isinstance(model, TradingModel)


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [("cnn", (B, T, T)), ("lstm", (B, T, T)), ("attention_lstm", (B, T)), ("hybrid", (B, T, T))],
)
def test_attention_is_returned_when_heads_are_set(
    model_type: str, expected: tuple[int, ...]
) -> None:
    out = build_model(tiny_spec(model_type), F, T)(batch())
    assert out.attention is not None and out.attention.shape == expected
    # averaged over heads: each query's weights are a distribution
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(expected[:-1]))


@pytest.mark.parametrize("model_type", ["cnn", "lstm", "hybrid"])
def test_no_attention_without_heads(model_type: str) -> None:
    spec = tiny_spec(model_type, cnn={"attentionHeads": 0}, lstm={"attentionHeads": 0})
    assert build_model(spec, F, T)(batch()).attention is None


def test_attention_lstm_needs_attention_heads() -> None:
    with pytest.raises(ValueError, match=r"attention_lstm needs lstm\.attentionHeads > 0"):
        tiny_spec("attention_lstm", lstm={"attentionHeads": 0})


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("skip", [True, False])
def test_lstm_variants(bidirectional: bool, skip: bool) -> None:
    spec = tiny_spec("lstm", lstm={"bidirectional": bidirectional, "skipConnections": skip})
    model = build_model(spec, F, T)
    assert model.embed_dim == 2 * 4 * (2 if bidirectional else 1)
    assert model(batch()).logits.shape == (B, 3)


def test_skip_connections_change_the_output_not_the_parameters() -> None:
    outputs, counts = [], []
    for skip in (True, False):
        torch.manual_seed(0)
        model = build_model(tiny_spec("lstm", lstm={"skipConnections": skip}), F, T).eval()
        outputs.append(model(batch()).logits)
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts[0] == counts[1]
    assert not torch.allclose(outputs[0], outputs[1])


def test_cross_attention_fusion_attends_from_lstm_to_cnn_steps() -> None:
    spec = tiny_spec(
        fusion={"method": "cross_attention"},
        cnn={"layers": [{"outChannels": 4, "kernelSize": 3, "stride": 2}], "attentionHeads": 2},
    )
    out = build_model(spec, F, T)(batch())
    assert out.logits.shape == (B, 3)
    assert out.attention is not None and out.attention.shape == (B, T, T // 2)


def test_multi_scale_conv_aligns_strides_and_even_kernels() -> None:
    layers = [
        {"outChannels": 4, "kernelSize": 4},
        {"outChannels": 4, "kernelSize": 3, "stride": 3},
    ]
    out = build_model(tiny_spec("cnn", cnn={"layers": layers}), F, T)(batch())
    assert out.attention is not None and out.attention.shape == (B, T // 3, T // 3)


@pytest.mark.parametrize("model_type", ["lstm", "attention_lstm"])
def test_seq2seq_without_teacher_forcing(model_type: str) -> None:
    model = build_model(tiny_spec(model_type), F, T, Seq2SeqSpec(output_length=3)).eval()
    target = torch.randn(B, 3)
    plain = model(batch()).sequence
    assert plain is not None and plain.shape == (B, 3)
    # in eval mode the target is never fed, whatever the ratio
    torch.testing.assert_close(model(batch(), target, 1.0).sequence, plain)


def test_seq2seq_teacher_forcing_feeds_the_previous_true_value() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec("lstm", dropout=0.0), F, T, Seq2SeqSpec(output_length=3))
    model.train()
    target = torch.randn(B, 3)
    changed = target.clone()
    changed[:, 1] += 1.0
    forced = model(batch(), target, 1.0).sequence
    forced_changed = model(batch(), changed, 1.0).sequence
    free = model(batch(), target, 0.0).sequence
    assert forced is not None and forced_changed is not None and free is not None
    # step 2 reads target[:, 1]; steps 0 and 1 do not
    torch.testing.assert_close(forced[:, :2], forced_changed[:, :2])
    assert not torch.allclose(forced[:, 2], forced_changed[:, 2])
    torch.testing.assert_close(forced[:, 0], free[:, 0])
    assert not torch.allclose(forced[:, 1:], free[:, 1:])


@pytest.mark.parametrize("model_type", ["cnn", "hybrid"])
def test_seq2seq_is_refused_for_cnn_and_hybrid(model_type: str) -> None:
    with pytest.raises(ValueError, match="seq2seq"):
        build_model(tiny_spec(model_type), F, T, Seq2SeqSpec())


@pytest.mark.parametrize("model_type", TYPES)
def test_set_dropout_changes_every_dropout(model_type: str) -> None:
    model = build_model(tiny_spec(model_type), F, T)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(m.p == 0.2 for m in dropouts)
    model.set_dropout(0.05)
    assert all(m.p == 0.05 for m in dropouts)
    with pytest.raises(ValueError):
        model.set_dropout(1.0)


def test_input_of_the_wrong_width_is_rejected() -> None:
    model = build_model(tiny_spec(), F, T)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(B, T, F + 1))


@pytest.mark.parametrize("model_type", TYPES)
def test_a_tiny_model_overfits_a_tiny_batch(model_type: str) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(model_type, dropout=0.0)
    model = build_model(spec, F, T)
    loss_fn = MultiTaskLoss(LossWeights(), HeadsSpec())
    x = batch()
    y_class, y_ret = torch.tensor([0, 1, 2, 1]), torch.tensor([-1.0, 0.0, 1.0, 0.5])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = loss_fn(model(x), y_class, y_ret)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
