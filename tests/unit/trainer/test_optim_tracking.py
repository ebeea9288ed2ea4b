import itertools

import pytest
import torch

from tradewind.api.training import OptimizerSpec, SchedulerSpec
from tradewind.trainer.optim import (
    build_optimizer,
    build_scheduler,
    step_scheduler,
    step_scheduler_in_epoch,
)
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
        step_scheduler(sched, spec=SchedulerSpec(), val_loss=1.0)
    assert lrs[0] == pytest.approx(0.1) and lrs[1] < 0.1 and lrs[3] == pytest.approx(0.1)


def test_warmup_then_step_decay() -> None:
    opt = _optimizer()
    sched = build_scheduler(
        opt, SchedulerSpec(name="step", step_size=1, gamma=0.5, warmup_epochs=2), epochs=10
    )
    lrs = []
    for _ in range(4):
        lrs.append(round(opt.param_groups[0]["lr"], 6))
        step_scheduler(sched, spec=SchedulerSpec(), val_loss=1.0)
    assert lrs[0] == pytest.approx(0.01) and lrs[0] < lrs[1] < lrs[2]


def test_plateau_decays_only_without_improvement() -> None:
    opt = _optimizer()
    sched = build_scheduler(opt, SchedulerSpec(name="plateau", patience=0, gamma=0.5), epochs=10)
    step_scheduler(sched, spec=SchedulerSpec(), val_loss=1.0)
    step_scheduler(sched, spec=SchedulerSpec(), val_loss=0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    step_scheduler(sched, spec=SchedulerSpec(), val_loss=0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_interval_batch_anneals_warm_restarts_within_each_epoch() -> None:
    """The guide's loop steps the schedule after every batch; t0 still counts epochs."""
    opt = _optimizer()
    spec = SchedulerSpec(name="cosine_warm_restarts", t0=2, t_mult=1, interval="batch")
    sched = build_scheduler(opt, spec, epochs=4, steps_per_epoch=4)
    lrs = []
    for epoch in range(3):
        for done in range(1, 5):
            lrs.append(opt.param_groups[0]["lr"])
            step_scheduler_in_epoch(sched, spec, epoch, done, 4)
        step_scheduler(sched, 1.0, spec)  # nothing at the epoch's end
    assert lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs[:8]))  # falls every batch
    assert lrs[8] == pytest.approx(0.1)  # the restart, after t0 = 2 epochs
    assert lrs[4] == pytest.approx(0.05)  # half way: cos(pi / 2)


def test_interval_batch_runs_onecycle_over_every_step_and_never_past_it() -> None:
    opt = _optimizer()
    spec = SchedulerSpec(name="onecycle", interval="batch")
    sched = build_scheduler(opt, spec, epochs=2, steps_per_epoch=5)
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 10
    lrs = []
    for epoch in range(2):
        for done in range(1, 8):  # more steps than sized for (a larger epoch) do not raise
            lrs.append(opt.param_groups[0]["lr"])
            step_scheduler_in_epoch(sched, spec, epoch, done, 7)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 2  # 30% of 10 steps up
    assert lrs[-1] == min(lrs) < 1e-3  # annealed to the floor by the last step


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "cosine", "interval": "batch"}, "interval batch is for"),
        ({"name": "onecycle", "interval": "batch", "warmupEpochs": 2}, "warmupEpochs is for"),
    ],
)
def test_interval_batch_is_refused_where_it_means_nothing(
    fields: dict[str, object], message: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SchedulerSpec.model_validate(fields)


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
