from tradewind.api.hyperparameters import (
    HYPERPARAMETERS,
    hyperparameter_errors,
    hyperparameter_names_rule,
    resolve_hyperparameters,
)


def test_defaults_follow_stable_baselines3() -> None:
    ppo = resolve_hyperparameters("ppo", {})
    assert ppo.model_dump()["n_steps"] == 2048 and ppo.model_dump()["clip_range"] == 0.2
    dqn = resolve_hyperparameters("dqn", {"learning_rate": 5e-4})
    assert dqn.model_dump()["learning_rate"] == 5e-4
    assert dqn.model_dump()["exploration_final_eps"] == 0.05


def test_errors_name_the_key_and_the_allowed_names() -> None:
    ((key, problem),) = hyperparameter_errors("sac", {"n_steps": 5})
    assert key == "n_steps"
    assert "unknown sac hyperparameter" in problem and "buffer_size" in problem
    ((key, problem),) = hyperparameter_errors("ppo", {"gamma": 2})
    assert key == "gamma" and "less than or equal to 1" in problem


def test_cel_rule_names_every_algorithm() -> None:
    rule = hyperparameter_names_rule()
    for algorithm in HYPERPARAMETERS:
        assert f"self.algorithm == '{algorithm}'" in rule
