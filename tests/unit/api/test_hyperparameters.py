from tradewind.api.hyperparameters import (
    HYPERPARAMETERS,
    hyperparameter_errors,
    hyperparameter_name_rules,
    hyperparameters_crd_schema,
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


def test_ent_coef_auto_is_told_what_to_write_instead() -> None:
    # SB3 spells a learned coefficient ent_coef="auto"; here that is SAC's default, unset
    for given in ("auto", "auto_0.1"):
        ((key, problem),) = hyperparameter_errors("sac", {"ent_coef": given})
        assert key == "ent_coef" and "leave ent_coef unset for SB3's 'auto'" in problem
    ((_, problem),) = hyperparameter_errors("ppo", {"ent_coef": "auto"})
    assert "only sac learns" in problem
    ((_, problem),) = hyperparameter_errors("sac", {"ent_coef": -1})
    assert "greater than 0" in problem


def test_cel_rules_refuse_names_of_other_algorithms() -> None:
    import cel

    rules = dict(zip(HYPERPARAMETERS, hyperparameter_name_rules(), strict=True))
    rule, message = rules["sac"]
    assert message.startswith("sac takes only:") and "buffer_size" in message
    sac_with = lambda hp: {"self": {"algorithm": "sac", "hyperparameters": hp}}  # noqa: E731
    assert cel.evaluate(rule, sac_with({"buffer_size": 10})) is True
    assert cel.evaluate(rule, sac_with({"n_steps": 10})) is False
    ppo_rule, _ = rules["ppo"]
    assert cel.evaluate(ppo_rule, sac_with({"n_steps": 10})) is True  # not ppo: not its rule


def test_crd_schema_types_every_name() -> None:
    props = hyperparameters_crd_schema()["properties"]
    assert props["n_steps"]["type"] == "integer"
    assert props["net_arch"]["type"] == "array" and props["net_arch"]["maxItems"] == 16
    assert "ppo" in props["n_steps"]["description"]
