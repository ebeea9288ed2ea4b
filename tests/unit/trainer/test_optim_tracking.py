import pytest
import torch

from tradewind.api.training import OptimizerSpec, SchedulerSpec
from tradewind.trainer.optim import build_optimizer, build_scheduler, step_scheduler
from tradewind.trainer.tracking import flatten


def _optimizer(name: str = "adamw") -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2))]
    return build_optimizer(params, OptimizerSpec(name=name, learning_rate=0.1))


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)
def test_optimizer_from_spec(name: str, cls: type) -> None:
    spec = OptimizerSpec(
        name=name, learning_rate=0.02, weight_decay=0.03, beta1=0.8, beta2=0.95, momentum=0.7
    )
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, spec)
    assert type(opt) is cls  # AdamW subclasses Adam: isinstance would not tell them apart
    (group,) = opt.param_groups
    assert group["params"] == params
    assert (group["lr"], group["weight_decay"]) == (0.02, 0.03)
    if name == "sgd":
        assert group["momentum"] == 0.7
    else:
        assert group["betas"] == (0.8, 0.95)
        assert group["decoupled_weight_decay"] is (name == "adamw")


def test_cosine_warm_restarts_returns_to_the_peak_after_t0() -> None:
    opt = _optimizer()
    sched = build_scheduler(
        opt, SchedulerSpec(name="cosine_warm_restarts", t0=3, t_mult=1), epochs=10
    )
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        step_scheduler(sched, val_loss=1.0)
    assert lrs[0] == pytest.approx(0.1) and lrs[1] < 0.1 and lrs[3] == pytest.approx(0.1)


def test_warmup_then_step_decay() -> None:
    opt = _optimizer()
    sched = build_scheduler(
        opt, SchedulerSpec(name="step", step_size=1, gamma=0.5, warmup_epochs=2), epochs=10
    )
    lrs = []
    for _ in range(4):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        step_scheduler(sched, val_loss=1.0)
    assert lrs[0] == pytest.approx(0.01) and lrs[0] < lrs[1] < lrs[2]


def test_plateau_decays_only_without_improvement() -> None:
    opt = _optimizer()
    sched = build_scheduler(opt, SchedulerSpec(name="plateau", patience=0, gamma=0.5), epochs=10)
    step_scheduler(sched, val_loss=1.0)
    step_scheduler(sched, val_loss=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    step_scheduler(sched, val_loss=0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_none_schedule() -> None:
    assert build_scheduler(_optimizer(), SchedulerSpec(name="none"), epochs=3) is None


def test_flatten_spec_into_params() -> None:
    flat = flatten(
        {"model": {"type": "hybrid", "cnn": {"layers": [{"outChannels": 8}]}}, "tags": {}}
    )
    assert flat == {
        "model.type": "hybrid",
        "model.cnn.layers": "[{'outChannels': 8}]",
        "tags": "{}",
    }
