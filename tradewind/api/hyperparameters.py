"""stable-baselines3 hyperparameters per algorithm, with rl-zoo3's (snake_case) names.

Keys are SB3 constructor arguments, so a hyperparameter file from rl-zoo3 carries over; the
policy network is given flat (`net_arch`, `activation_fn`) instead of a `policy_kwargs` string.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NetArch = Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1, max_length=16)]


class _Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    learning_rate: float = Field(default=3e-4, gt=0, le=1)
    gamma: float = Field(default=0.99, gt=0, le=1)
    net_arch: NetArch = [64, 64]
    activation_fn: Literal["tanh", "relu", "elu", "leaky_relu"] = "tanh"


class _OnPolicy(_Hyperparameters):
    n_steps: int = Field(default=2048, ge=1, le=1_000_000)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    ent_coef: float = Field(default=0.0, ge=0, le=10)
    vf_coef: float = Field(default=0.5, ge=0, le=10)
    max_grad_norm: float = Field(default=0.5, gt=0, le=1000)
    normalize_advantage: bool = True


class PPOHyperparameters(_OnPolicy):
    batch_size: int = Field(default=64, ge=2, le=1_000_000)
    n_epochs: int = Field(default=10, ge=1, le=1000)
    clip_range: float = Field(default=0.2, gt=0, le=1)
    target_kl: float | None = Field(default=None, gt=0)


class A2CHyperparameters(_OnPolicy):
    n_steps: int = Field(default=5, ge=1, le=1_000_000)
    learning_rate: float = Field(default=7e-4, gt=0, le=1)
    gae_lambda: float = Field(default=1.0, ge=0, le=1)
    use_rms_prop: bool = True
    normalize_advantage: bool = False


class _OffPolicy(_Hyperparameters):
    buffer_size: int = Field(default=1_000_000, ge=1, le=100_000_000)
    learning_starts: int = Field(default=100, ge=0)
    batch_size: int = Field(default=256, ge=1, le=1_000_000)
    tau: float = Field(default=0.005, gt=0, le=1)
    train_freq: int = Field(default=1, ge=1, le=1_000_000)
    gradient_steps: int = Field(default=1, ge=-1, le=10_000)
    net_arch: NetArch = [256, 256]
    activation_fn: Literal["tanh", "relu", "elu", "leaky_relu"] = "relu"


class SACHyperparameters(_OffPolicy):
    ent_coef: float | None = Field(default=None, gt=0)
    """Entropy coefficient; unset learns it (SB3's "auto")."""
    target_update_interval: int = Field(default=1, ge=1)
    use_sde: bool = False


class TD3Hyperparameters(_OffPolicy):
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    policy_delay: int = Field(default=2, ge=1, le=1000)
    target_policy_noise: float = Field(default=0.2, ge=0, le=10)
    target_noise_clip: float = Field(default=0.5, ge=0, le=10)
    action_noise_std: float = Field(default=0.1, ge=0, le=10)


class DQNHyperparameters(_OffPolicy):
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    tau: float = Field(default=1.0, gt=0, le=1)
    train_freq: int = Field(default=4, ge=1, le=1_000_000)
    target_update_interval: int = Field(default=10_000, ge=1)
    exploration_fraction: float = Field(default=0.1, gt=0, le=1)
    exploration_initial_eps: float = Field(default=1.0, ge=0, le=1)
    exploration_final_eps: float = Field(default=0.05, ge=0, le=1)
    max_grad_norm: float = Field(default=10, gt=0, le=1000)
    net_arch: NetArch = [64, 64]


HYPERPARAMETERS: dict[str, type[_Hyperparameters]] = {
    "ppo": PPOHyperparameters,
    "a2c": A2CHyperparameters,
    "sac": SACHyperparameters,
    "td3": TD3Hyperparameters,
    "dqn": DQNHyperparameters,
}


def resolve_hyperparameters(algorithm: str, given: dict[str, Any]) -> _Hyperparameters:
    """The full hyperparameter set for `algorithm`: SB3/rl-zoo3 defaults overlaid by `given`."""
    return HYPERPARAMETERS[algorithm].model_validate(given)


def hyperparameter_errors(algorithm: str, given: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each bad hyperparameter, empty when all are valid."""
    try:
        resolve_hyperparameters(algorithm, given)
    except ValidationError as exc:
        allowed = ", ".join(sorted(HYPERPARAMETERS[algorithm].model_fields))
        out = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                out.append((key, f"unknown {algorithm} hyperparameter; allowed: {allowed}"))
            elif key == "ent_coef" and str(given.get(key)).startswith("auto"):
                out.append((key, _ENT_COEF_AUTO[algorithm == "sac"]))
            else:
                out.append((key, err["msg"]))
        return out
    return []


_ENT_COEF_AUTO = (
    "a number >= 0 (only sac learns its entropy coefficient)",
    "a number > 0 for a fixed coefficient; leave ent_coef unset for SB3's 'auto' (learned, "
    "from 1.0)",
)
"""What `ent_coef: auto...` gets told: (not sac, sac)."""
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _crd_property(schema: dict[str, Any]) -> dict[str, Any]:
    """The type and bounds of one hyperparameter, without its default."""
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    (typed,) = options
    out = {k: v for k, v in typed.items() if k in ("type", "enum", *_BOUNDS)}
    if typed.get("type") == "array":
        out |= {"items": {"type": typed["items"]["type"]}, "maxItems": typed["maxItems"]}
    return out


def hyperparameters_crd_schema() -> dict[str, Any]:
    """Every hyperparameter name of every algorithm, typed, so that the apiserver rejects
    unknown names and CEL can check which algorithm takes which."""
    properties: dict[str, Any] = {}
    for algorithm, model in HYPERPARAMETERS.items():
        for name, schema in model.model_json_schema()["properties"].items():
            prop = _crd_property(schema)
            entry = properties.setdefault(name, {**prop, "algorithms": []})
            entry["algorithms"].append(algorithm)
            for bound in _BOUNDS:  # keep only the bounds every algorithm shares
                if entry.get(bound) != prop.get(bound):
                    entry.pop(bound, None)
    for name, entry in properties.items():
        algorithms = ", ".join(entry.pop("algorithms"))
        entry["description"] = f"stable-baselines3 `{name}` ({algorithms})."
    return {"type": "object", "properties": dict(sorted(properties.items()))}


def hyperparameter_name_rules() -> list[tuple[str, str]]:
    """(CEL rule, message) per algorithm, refusing the names of other algorithms."""
    every = set(hyperparameters_crd_schema()["properties"])
    rules = []
    for algorithm, model in HYPERPARAMETERS.items():
        foreign = sorted(every - set(model.model_fields))
        present = " || ".join(f"has(self.hyperparameters.{n})" for n in foreign)
        allowed = ", ".join(sorted(model.model_fields))
        rules.append(
            (
                f"self.algorithm != '{algorithm}' || !({present})",
                f"{algorithm} takes only: {allowed}",
            )
        )
    return rules
