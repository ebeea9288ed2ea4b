import math

import pytest
import torch
import torch.nn.functional as F

from tradewind.api.training import HeadsSpec, LossWeights
from tradewind.trainer.losses import MultiTaskLoss, gaussian_nll
from tradewind.trainer.models import ModelOutput

B = 6


def output(uncertainty: bool = True, sequence: bool = False) -> ModelOutput:
    g = torch.Generator().manual_seed(0)
    return ModelOutput(
        logits=torch.randn(B, 3, generator=g, requires_grad=True),
        ret=torch.randn(B, generator=g, requires_grad=True),
        log_var=torch.randn(B, generator=g) if uncertainty else None,
        sequence=torch.randn(B, 4, generator=g) if sequence else None,
    )


Y_CLASS = torch.tensor([0, 1, 2, 1, 0, 2])
Y_RET = torch.linspace(-1, 1, B)


def test_components_and_total_follow_the_weights() -> None:
    weights = LossWeights(classification=0.7, regression=0.3, uncertainty=0.2)
    out = output()
    assert out.log_var is not None and out.ret is not None
    total, parts = MultiTaskLoss(weights, HeadsSpec())(out, Y_CLASS, Y_RET)
    assert set(parts) == {"classification", "regression", "uncertainty", "total"}
    assert parts["classification"] == pytest.approx(F.cross_entropy(out.logits, Y_CLASS).item())
    nll = 0.5 * (out.log_var + (Y_RET - out.ret) ** 2 / out.log_var.exp()).mean()
    assert parts["regression"] == pytest.approx(nll.item(), rel=1e-5)
    assert parts["uncertainty"] == pytest.approx(out.log_var.pow(2).mean().item(), rel=1e-5)
    terms = ("classification", "regression", "uncertainty")
    expected = sum(w * parts[name] for w, name in zip((0.7, 0.3, 0.2), terms, strict=True))
    assert parts["total"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_zero_weight_removes_a_term() -> None:
    weights = LossWeights(regression=0.0, uncertainty=0.5)
    _, parts = MultiTaskLoss(weights, HeadsSpec())(output(), Y_CLASS, Y_RET)
    assert "regression" not in parts
    expected = parts["classification"] + 0.5 * parts["uncertainty"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5)


def test_mse_without_the_uncertainty_head() -> None:
    heads = HeadsSpec(uncertainty=False)
    out = output(uncertainty=False)
    assert out.ret is not None
    _, parts = MultiTaskLoss(LossWeights(), heads)(out, Y_CLASS, Y_RET)
    assert set(parts) == {"classification", "regression", "total"}
    assert parts["regression"] == pytest.approx(F.mse_loss(out.ret, Y_RET).item())


def test_classification_only() -> None:
    heads = HeadsSpec(regression=False, uncertainty=False)
    out = ModelOutput(logits=torch.zeros(B, 3))
    total, parts = MultiTaskLoss(LossWeights(), heads)(out, Y_CLASS, Y_RET)
    assert set(parts) == {"classification", "total"}
    assert total.item() == pytest.approx(math.log(3))


def test_gaussian_nll_at_unit_variance_is_half_the_mse() -> None:
    mean, target = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0])
    nll = gaussian_nll(mean, torch.zeros(2), target)
    assert nll.item() == pytest.approx(0.5 * F.mse_loss(mean, target).item())


def test_class_weights_reweight_the_cross_entropy() -> None:
    class_weights = torch.tensor([1.0, 0.2, 3.0])
    heads = HeadsSpec(regression=False, uncertainty=False)
    out = output()
    _, parts = MultiTaskLoss(LossWeights(), heads, class_weights)(out, Y_CLASS, Y_RET)
    expected = F.cross_entropy(out.logits, Y_CLASS, weight=class_weights)
    assert parts["classification"] == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="class_weights"):
        MultiTaskLoss(LossWeights(), heads, torch.ones(2))


def test_sequence_term_when_forecast_and_targets_are_given() -> None:
    out = output(sequence=True)
    assert out.sequence is not None
    loss_fn = MultiTaskLoss(LossWeights(), HeadsSpec())
    y_seq = torch.zeros(B, 4)
    _, with_seq = loss_fn(out, Y_CLASS, Y_RET, y_seq)
    _, without = loss_fn(out, Y_CLASS, Y_RET)
    assert with_seq["sequence"] == pytest.approx(out.sequence.pow(2).mean().item())
    assert with_seq["total"] == pytest.approx(without["total"] + with_seq["sequence"], rel=1e-5)


def test_the_loss_backpropagates() -> None:
    out = output()
    total, _ = MultiTaskLoss(LossWeights(), HeadsSpec())(out, Y_CLASS, Y_RET)
    total.backward()
    assert out.logits.grad is not None and out.ret is not None and out.ret.grad is not None


def test_missing_head_output_is_an_error() -> None:
    out = ModelOutput(logits=torch.zeros(B, 3))
    with pytest.raises(ValueError, match="ret"):
        MultiTaskLoss(LossWeights(), HeadsSpec(uncertainty=False))(out, Y_CLASS, Y_RET)
