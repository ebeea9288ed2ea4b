import pytest

from tradewind.api.rl import RLRunSpec
from tradewind.api.spec_paths import SpecPathError, check_path, set_path
from tradewind.api.training import TrainingRunSpec

RL_SPEC = {"agents": [{"name": "ppo", "algorithm": "ppo"}, {"name": "sac", "algorithm": "sac"}]}


@pytest.mark.parametrize(
    "path",
    ["training.optimizer.learningRate", "model.dropout", "training.augmentation.noiseStd"],
)
def test_existing_training_paths(path: str) -> None:
    check_path(TrainingRunSpec, {}, path)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("training.learningRate", "not a field of TrainingSpec"),
        ("model.dropout.rate", "has no fields"),
        ("model[0].type", "not a list"),
        ("training..epochs", "not a field name"),
    ],
)
def test_bad_training_paths(path: str, problem: str) -> None:
    with pytest.raises(SpecPathError, match=problem):
        check_path(TrainingRunSpec, {}, path)


def test_list_items_by_index_or_name() -> None:
    check_path(RLRunSpec, RL_SPEC, "agents[1].hyperparameters.gamma")
    check_path(RLRunSpec, RL_SPEC, "agents[sac].weight")
    with pytest.raises(SpecPathError, match="no item named 'td3'"):
        check_path(RLRunSpec, RL_SPEC, "agents[td3].weight")
    with pytest.raises(SpecPathError, match="out of range"):
        check_path(RLRunSpec, RL_SPEC, "agents[2].weight")
    with pytest.raises(SpecPathError, match="is a list"):
        check_path(RLRunSpec, RL_SPEC, "agents.weight")


def test_set_path_copies_and_creates_objects() -> None:
    spec = {"training": {"epochs": 3}}
    out = set_path(spec, "training.optimizer.learningRate", 0.01)
    assert out == {"training": {"epochs": 3, "optimizer": {"learningRate": 0.01}}}
    assert spec == {"training": {"epochs": 3}}
    out = set_path(RL_SPEC, "agents[sac].hyperparameters.tau", 0.01)
    assert out["agents"][1]["hyperparameters"] == {"tau": 0.01}
    assert "hyperparameters" not in RL_SPEC["agents"][1]
