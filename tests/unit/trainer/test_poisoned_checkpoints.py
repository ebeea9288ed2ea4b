"""A crafted checkpoint in a run's prefix runs nothing on resume: a pickle whose loading
would create a marker file, planted where each checkpointed object lives (RL policy and
optimisers, VecNormalize statistics, replay buffer, RNG states; the supervised model,
optimizer, scheduler, scaler and RNG states) in an otherwise complete checkpoint, is refused
with a clear error, and the marker never appears."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.trainer import test_supervised
from tests.unit.trainer.poison import (
    Poison,
    as_tensor,
    pickled_format_state,
    plant,
    poison_bytes,
    torch_bytes,
)
from tests.unit.trainer.rl.test_state import agent_markets, agent_spec, trained
from tests.unit.trainer.test_rl_tracking import tiny_rlrun
from tests.unit.trainer.test_supervised import Build
from tradewind.api import TrainingRun
from tradewind.api.manifest import parse_resource
from tradewind.trainer import entrypoint
from tradewind.trainer.checkpoint import Checkpointer, CheckpointError
from tradewind.trainer.rl import run as rl_run
from tradewind.trainer.rl.state import AgentStateError, PickledCheckpointError
from tradewind.trainer.rl.training import agent_state, train_agent
from tradewind.trainer.storage import LocalStore, open_store
from tradewind.trainer.tracking import Tracker

# The supervised trainer's fixtures.
feature_cache = test_supervised.feature_cache
make_trainer = test_supervised.make_trainer
isolated_tracking = test_supervised.isolated_tracking


def _with(state: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `state` with the entry at `path` replaced by `value` (`()`: all of it)."""
    if not path:
        return value  # type: ignore[no-any-return]
    out = copy.deepcopy(state)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    assert path[-1] in parent, path
    parent[path[-1]] = value
    return out


# --- RLRun -----------------------------------------------------------------------------------

RL_PLACES: list[tuple[str, ...]] = [
    ("params", "policy"),
    ("params", "actor.optimizer"),
    ("params", "critic.optimizer"),
    ("variables", "log_ent_coef"),
    ("counters", "num_timesteps"),
    ("replay_buffer", "arrays", "observations"),
    ("replay_buffer", "pos"),
    ("vecnormalize", "obs_rms", "mean"),
    ("vecnormalize", "ret_rms"),
    ("rng", "torch"),
    ("rng",),
]
"""Where a SAC agent's checkpoint (with VecNormalize) keeps each object."""


@pytest.fixture(scope="module")
def sac() -> Any:
    """A SAC agent (replay buffer, three optimisers, a torch variable) trained a little,
    with VecNormalize, its spec and markets, and its checkpoint state."""
    spec = agent_spec("sac").model_copy(update={"total_timesteps": 200})
    markets = agent_markets(spec)
    model, envs = trained(spec, markets)
    return spec, markets, model, envs, agent_state(model, envs)


def _resume(sac: Any, store: LocalStore) -> None:
    spec, markets, *_ = sac
    train_agent(spec, spec.agents[0], markets, Checkpointer(store), Tracker(enabled=False), 0)


@pytest.mark.parametrize("poisoned", ["model", "replay_buffer", "vecnormalize"])
def test_an_rl_checkpoint_in_the_pickled_format_is_refused_unread(
    poisoned: str, sac: Any, tmp_path: Path
) -> None:
    """What the trainer wrote before: the SB3 zip, the replay buffer and VecNormalize as
    pickled bytes. Loading them as it did (SB3 `load`, `load_replay_buffer`, `pickle.loads`)
    ran the poison; now the format is refused before any of them is read."""
    _, _, model, envs, _ = sac
    marker = tmp_path / "pwned"
    store = LocalStore(tmp_path / "store")
    plant(store, 200, torch_bytes(pickled_format_state(model, envs.train, marker, poisoned)))
    with pytest.raises(PickledCheckpointError, match="old pickled format") as caught:
        _resume(sac, store)
    assert not marker.exists()
    message = str(caught.value)
    assert message.startswith(f"agent sac: {store.uri('step-0000000200/state.pt')}: ")
    assert f"({poisoned}" in message or f" {poisoned}" in message
    assert "resumeFrom: none" in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("place", [(), *RL_PLACES], ids=lambda p: ".".join(p) or "state")
def test_a_pickled_object_in_an_rl_checkpoint_is_refused(
    place: tuple[str, ...], legacy: bool, sac: Any, tmp_path: Path
) -> None:
    """The poison as an object in state.pt: torch's weights-only loader refuses it."""
    marker = tmp_path / "pwned"
    store = LocalStore(tmp_path / "store")
    plant(store, 200, torch_bytes(_with(sac[-1], place, Poison(marker)), legacy=legacy))
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        _resume(sac, store)
    assert not marker.exists()


@pytest.mark.parametrize("place", RL_PLACES, ids=lambda p: ".".join(p))
def test_pickled_bytes_where_an_rl_checkpoint_keeps_arrays_are_refused(
    place: tuple[str, ...], sac: Any, tmp_path: Path
) -> None:
    """The poison as bytes (a uint8 tensor, which loads) where the current format keeps
    tensors or numbers: nothing unpickles them; the checkpoint does not fit and is refused."""
    marker = tmp_path / "pwned"
    store = LocalStore(tmp_path / "store")
    plant(store, 200, torch_bytes(_with(sac[-1], place, as_tensor(poison_bytes(marker)))))
    with pytest.raises(AgentStateError, match="checkpoint"):
        _resume(sac, store)
    assert not marker.exists()


@pytest.mark.usefixtures("isolated_tracking")
def test_the_rl_trainer_exits_64_on_a_pickled_checkpoint(
    sac: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m tradewind.trainer.rl`: a permanent failure (exit 64) saying why, the
    poison untouched."""
    monkeypatch.delenv("TRADEWIND_RUN_UID", raising=False)
    run = tiny_rlrun("poisoned", "test-poisoned")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run.model_dump(mode="json", by_alias=True, exclude_none=True)))
    state_dir = tmp_path / "state"
    agent = run.spec.agents[0]
    checkpointer = rl_run.agent_checkpointer(run, state_dir, agent.name)
    marker = tmp_path / "pwned"
    state = {"timesteps": 16, "model": as_tensor(poison_bytes(marker)), "rng": sac[-1]["rng"]}
    plant(checkpointer.store, 16, torch_bytes(state))
    code = rl_run.main(
        ["--config", str(config), "--state-dir", str(state_dir), "--agent-index", "0"]
    )
    assert code == 64
    assert "error: checkpoint:" in capsys.readouterr().err
    assert not marker.exists()


# --- TrainingRun -----------------------------------------------------------------------------

SUPERVISED_PLACES: list[tuple[str, ...]] = [
    (),
    ("model",),
    ("optimizer",),
    ("optimizer", "param_groups"),
    ("scheduler",),
    ("train_state",),
    ("train_state", "history"),
    ("rng", "numpy", "key"),
    ("rng", "python"),
    ("augment_rng",),
    ("normalizer",),
    ("grad_scaler",),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("place", SUPERVISED_PLACES, ids=lambda p: ".".join(p) or "state")
def test_a_pickled_object_in_a_supervised_checkpoint_is_refused(
    place: tuple[str, ...], legacy: bool, make_trainer: Build, tmp_path: Path
) -> None:
    trainer = make_trainer()
    state = trainer.state_dict()
    assert state["scheduler"] is not None
    state["grad_scaler"] = {"scale": 1024.0, "growth_factor": 2.0}  # as an fp16 run saves it
    marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoints"
    plant(LocalStore(folder), 1, torch_bytes(_with(state, place, Poison(marker)), legacy=legacy))
    resumed = make_trainer(checkpoints=folder)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        resumed.resume()
    assert not marker.exists()
    assert resumed.state.epoch == 0


@pytest.mark.usefixtures("isolated_tracking")
def test_the_trainer_exits_64_on_a_poisoned_checkpoint(
    tmp_path: Path,
    tiny_manifest: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m tradewind.trainer`: a permanent failure (exit 64) naming the checkpoint."""
    monkeypatch.delenv("TRADEWIND_RUN_UID", raising=False)
    manifest = tiny_manifest()
    run = parse_resource(manifest)
    assert isinstance(run, TrainingRun)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(manifest))
    state_dir = tmp_path / "state"
    store = open_store(entrypoint.checkpoint_uri(run, state_dir))
    marker = tmp_path / "pwned"
    plant(store, 1, torch_bytes({"model": Poison(marker), "optimizer": {}}))
    code = entrypoint.main(["--config", str(config), "--state-dir", str(state_dir)])
    assert code == entrypoint.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "error: checkpoint:" in err and "step-0000000001/state.pt" in err
    assert not marker.exists()


def test_the_poison_does_run_when_unpickled(tmp_path: Path) -> None:
    """The tests above would see it: unpickling the planted payload creates the marker."""
    import pickle

    marker = tmp_path / "pwned"
    pickle.loads(poison_bytes(marker)).close()
    assert marker.exists()
