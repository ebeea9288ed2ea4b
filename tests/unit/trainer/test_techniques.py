from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from tradewind.api.training import (
    AdversarialSpec,
    AugmentationSpec,
    HeadsSpec,
    LossWeights,
    MetaLearningSpec,
    ModelSpec,
)
from tradewind.trainer.losses import MultiTaskLoss
from tradewind.trainer.models import TradingModel, build_model
from tradewind.trainer.techniques.adversarial import pgd_perturb
from tradewind.trainer.techniques.augmentation import augment
from tradewind.trainer.techniques.maml import maml_step
from tradewind.trainer.techniques.schedules import dropout_at, teacher_forcing_at

B, T, F = 8, 10, 3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (more spin-wait on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(model_type: str = "hybrid") -> TradingModel:
    torch.manual_seed(0)
    spec = ModelSpec.model_validate(
        {
            "type": model_type,
            "cnn": {"layers": [{"outChannels": 4, "kernelSize": 3}], "attentionHeads": 2},
            "lstm": {"hiddenSize": 4, "numLayers": 1, "attentionHeads": 2},
            "fusion": {"dim": 8, "heads": 2},
        }
    )
    return build_model(spec, F, T)


def data(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, T, F, generator=g),
        "y_class": torch.randint(0, 3, (B,), generator=g),
        "y_ret": torch.randn(B, generator=g),
    }


LOSS = MultiTaskLoss(LossWeights(), HeadsSpec())
ADVERSARIAL = AdversarialSpec(epsilon=0.1, alpha=0.05, steps=4)


def loss_of(model: nn.Module, x: Tensor, batch: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return LOSS(model(x), batch["y_class"], batch["y_ret"])[0].item()


def test_pgd_stays_within_epsilon_and_increases_the_loss() -> None:
    model, batch = tiny_model().eval(), data(0)
    x_adv = pgd_perturb(model, LOSS, batch["x"], batch["y_class"], batch["y_ret"], ADVERSARIAL)
    assert x_adv.shape == batch["x"].shape and not x_adv.requires_grad
    assert (x_adv - batch["x"]).abs().max().item() <= ADVERSARIAL.epsilon + 1e-6
    assert loss_of(model, x_adv, batch) > loss_of(model, batch["x"], batch)


@pytest.mark.parametrize("training", [True, False])
def test_pgd_leaves_mode_gradients_and_norm_statistics_alone(training: bool) -> None:
    model, batch = tiny_model().train(training), data(1)
    statistics = {name: b.clone() for name, b in model.named_buffers()}
    pgd_perturb(model, LOSS, batch["x"], batch["y_class"], batch["y_ret"], ADVERSARIAL)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, statistics[name])


def maml_tasks() -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    return [(data(2 * i), data(2 * i + 1)) for i in range(2)]


def run_maml(model: nn.Module, first_order: bool) -> tuple[dict[str, float], dict[str, Tensor]]:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    spec = MetaLearningSpec(inner_learning_rate=0.05, inner_steps=2, first_order=first_order)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = maml_step(model, LOSS, maml_tasks(), spec, optimizer)
    deltas = {name: p.detach() - before[name] for name, p in model.named_parameters()}
    return metrics, deltas


def reference_meta_gradient(
    model: nn.Module, spec: MetaLearningSpec, adapt: bool = True
) -> dict[str, Tensor]:
    """MAML's meta-gradient written out: per task, `inner_steps` SGD steps on the support
    loss (their gradients constants for first order), then the gradient of the mean query
    loss at the adapted parameters with respect to the starting ones. `adapt=False` gives
    the gradient of plain training on the query batches."""
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def loss(weights: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        out = functional_call(model, weights, (batch["x"],))
        total: Tensor = LOSS(out, batch["y_class"], batch["y_ret"])[0]
        return total

    total = torch.zeros(())
    tasks = maml_tasks()
    for support, query in tasks:
        fast = dict(params)
        for _ in range(spec.inner_steps if adapt else 0):
            grads = torch.autograd.grad(
                loss(fast, support),
                list(fast.values()),
                create_graph=not spec.first_order,
                allow_unused=True,
            )
            fast = {
                n: p if g is None else p - spec.inner_learning_rate * g
                for (n, p), g in zip(fast.items(), grads, strict=True)
            }
        total = total + loss(fast, query) / len(tasks)
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


@pytest.mark.parametrize("first_order", [True, False])
def test_maml_step_descends_the_meta_gradient_not_the_plain_one(first_order: bool) -> None:
    # eval mode: no dropout, so the reference sees the same functions as maml_step
    model = tiny_model("lstm").eval()
    spec = MetaLearningSpec(inner_learning_rate=0.05, inner_steps=2, first_order=first_order)
    meta = reference_meta_gradient(model, spec)
    plain = reference_meta_gradient(model, spec, adapt=False)
    metrics, deltas = run_maml(model, first_order)
    assert not model.training
    for name, delta in deltas.items():  # SGD at lr 0.1: the step is -0.1 x the gradient
        torch.testing.assert_close(delta, -0.1 * meta[name], rtol=1e-4, atol=1e-7)
    distance = sum(float((meta[n] - plain[n]).norm()) for n in meta)
    assert distance > 1e-3 * sum(float(g.norm()) for g in plain.values())
    assert set(metrics) == {"support_loss", "query_loss"}


def test_second_order_maml_differs_from_first_order() -> None:
    _, first = run_maml(tiny_model("lstm"), first_order=True)
    _, second = run_maml(tiny_model("lstm"), first_order=False)
    assert any(not torch.allclose(first[name], second[name]) for name in first)


def test_pgd_and_maml_accept_a_ddp_model(tmp_path: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = tiny_model("lstm").train()
        ddp = DistributedDataParallel(model)
        batch = data(0)
        x_adv = pgd_perturb(ddp, LOSS, batch["x"], batch["y_class"], batch["y_ret"], ADVERSARIAL)
        assert (x_adv - batch["x"]).abs().max().item() <= ADVERSARIAL.epsilon + 1e-6
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        metrics = maml_step(ddp, LOSS, maml_tasks(), MetaLearningSpec(), optimizer)
        assert set(metrics) == {"support_loss", "query_loss"}
    finally:
        dist.destroy_process_group()


def test_maml_needs_tasks() -> None:
    model = tiny_model("cnn")
    with pytest.raises(ValueError, match="task"):
        maml_step(model, LOSS, [], MetaLearningSpec(), torch.optim.SGD(model.parameters()))


def augmentation(**fields: Any) -> AugmentationSpec:
    return AugmentationSpec.model_validate(fields)


def test_augmentation_is_deterministic_and_shape_preserving() -> None:
    spec = augmentation(noiseStd=0.1, timeShiftMax=2, probability=0.5)
    x = torch.randn(B, T, F)
    first = augment(x, spec, torch.Generator().manual_seed(7))
    again = augment(x, spec, torch.Generator().manual_seed(7))
    other = augment(x, spec, torch.Generator().manual_seed(8))
    assert first.shape == x.shape
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_augmentation_with_probability_zero_is_the_identity() -> None:
    x = torch.randn(B, T, F)
    spec = augmentation(noiseStd=1.0, timeShiftMax=3, probability=0.0)
    out = augment(x, spec, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    assert out is not x


def test_time_shift_rolls_with_edge_padding() -> None:
    ramp = torch.arange(T, dtype=torch.float32).view(1, T, 1).expand(64, T, F)
    spec = augmentation(noiseStd=0.0, timeShiftMax=3, probability=1.0)
    out = augment(ramp, spec, torch.Generator().manual_seed(0))
    shifts = 3 - out[:, 3, 0]  # out[:, t] = x[t - shift] away from the edges
    assert shifts.abs().max().item() <= 3 and len(shifts.unique()) > 1
    expected = (torch.arange(T).view(1, T) - shifts.view(-1, 1)).clamp(0, T - 1)
    torch.testing.assert_close(out[..., 0], expected.float())
    torch.testing.assert_close(ramp[0, :, 0], torch.arange(T, dtype=torch.float32))


def test_noise_has_the_requested_scale_on_the_requested_share_of_samples() -> None:
    n, noise_std, probability = 2000, 0.5, 0.3
    x = torch.randn(n, T, F)
    spec = augmentation(noiseStd=noise_std, probability=probability)
    change = augment(x, spec, torch.Generator().manual_seed(0)) - x
    perturbed = change.flatten(1).ne(0).any(1)
    share = perturbed.float().mean().item()
    assert share == pytest.approx(probability, abs=4 * (probability * 0.7 / n) ** 0.5)
    assert change[perturbed].std().item() == pytest.approx(noise_std, rel=0.02)
    assert change[perturbed].mean().item() == pytest.approx(0.0, abs=0.01)


def test_dropout_schedule_endpoints() -> None:
    assert dropout_at(0, 10, 0.5, 0.1) == pytest.approx(0.5)
    assert dropout_at(9, 10, 0.5, 0.1) == pytest.approx(0.1)
    assert dropout_at(20, 10, 0.5, 0.1) == pytest.approx(0.1)
    assert dropout_at(3, 7, 0.4, 0.1) == pytest.approx(0.25)
    assert dropout_at(0, 1, 0.4, 0.1) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        dropout_at(-1, 10, 0.5, 0.1)


def test_teacher_forcing_schedule() -> None:
    assert teacher_forcing_at(0, 0.5, 0.9) == pytest.approx(0.5)
    assert teacher_forcing_at(2, 0.5, 0.9) == pytest.approx(0.405)
    assert teacher_forcing_at(5, 0.8, 1.0) == pytest.approx(0.8)
