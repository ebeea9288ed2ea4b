"""An extension's RL environment (`environment.type: <package>.<name>`, entry point group
`tradewind.environments`) and the vector environments of a run, built-in or extension.

The factory its entry point names is called as

    factory(*, market, spec, seed, random_start, params) -> TradingEnvironment

with what Tradewind builds its own environment from (`TradingEnvironment(market, spec,
seed=seed, random_start=random_start)`) and the validated `environment.params`. It must
return a subclass of `TradingEnvironment` built on exactly that market and spec that
overrides only the hooks `shape_reward` and `shape_observation` (and `__init__`, and methods
of its own): stepping, fills at the next bar, costs and so the per-step portfolio returns
and turnover stay Tradewind's, and the test report, buy-and-hold, the ensemble and the
placebo read them as for the built-in environment. The action space stays the built-in one
(the ensemble and buy-and-hold decode actions as target weights).

The built-in environment trains in one `BatchedTradingEnv`; an extension's, whose hooks are
Python per environment, in a `DummyVecEnv` of its environments (slower, the same
semantics).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from tradewind.api.rl import EnvironmentSpec
from tradewind.extensions import ExtensionError, ParamsError, is_extension, registry
from tradewind.trainer.execution import cost_rate
from tradewind.trainer.rl.env import TradingEnvironment, action_space_of
from tradewind.trainer.rl.market import Market

HOOKS = frozenset({"shape_reward", "shape_observation", "metadata"})
"""What a subclass may override (besides `__init__`); everything else TradingEnvironment
defines is Tradewind's."""


def _factory_and_params(spec: EnvironmentSpec) -> tuple[Callable[..., Any], Any]:
    from tradewind.trainer.entrypoint import SpecNotRunnableError

    extensions = registry()
    try:
        factory = extensions.load("environment", spec.type)
        params = extensions.parse_params("environment", spec.type, spec.params)
    except ParamsError as exc:
        raise SpecNotRunnableError(f"environment.params{exc.path}: {exc.message}") from exc
    except ExtensionError as exc:
        raise SpecNotRunnableError(f"environment.type: {exc}") from exc
    return factory, params


def build_environment(
    market: Market,
    spec: EnvironmentSpec,
    seed: int | None = None,
    random_start: bool | None = None,
) -> TradingEnvironment:
    """The environment `spec.type` names over `market`: Tradewind's own for `portfolio`,
    else the extension's (checked against the contract; a breach is a SpecNotRunnableError,
    exit 64)."""
    if not is_extension(spec.type):
        return TradingEnvironment(market, spec, seed=seed, random_start=random_start)
    factory, params = _factory_and_params(spec)
    env = factory(market=market, spec=spec, seed=seed, random_start=random_start, params=params)
    return check_contract(env, spec, market)


def contract_breach(env: Any, spec: EnvironmentSpec, market: Market) -> str | None:
    """What breaks the contract of an extension's environment (None if nothing)."""
    if not isinstance(env, TradingEnvironment):
        return (
            f"returned {type(env).__name__}, not a "
            "tradewind.trainer.rl.TradingEnvironment (subclass it)"
        )
    overridden = sorted(
        name
        for name in vars(TradingEnvironment)
        if name not in HOOKS
        and not (name.startswith("__") and name not in ("__getstate__", "__setstate__"))
        and getattr(type(env), name, None) is not getattr(TradingEnvironment, name)
    )
    if overridden:
        return (
            f"{type(env).__name__} overrides {', '.join(overridden)}: an extension's "
            "environment may override only shape_reward and shape_observation (the "
            "accounting is Tradewind's)"
        )
    if env.market is not market or env.env_spec is not spec:
        return "its environment must be built on the market and spec the factory is given"
    accounting = (
        env._cost_rate == cost_rate(spec.transaction_cost, spec.slippage)
        and env._max_position == spec.max_position_size
        and env._episode_length == spec.episode_length
    )
    if not accounting:
        return "its environment changed costs, position limits or the episode length"
    if env.action_space != action_space_of(spec, market.num_symbols):
        return "its environment must keep the built-in action space (environment.actionSpace)"
    if not isinstance(env.observation_space, spaces.Box) or len(env.observation_space.shape) != 1:
        return "its observation_space must be a 1-D gymnasium.spaces.Box"
    return None


def check_contract(env: Any, spec: EnvironmentSpec, market: Market) -> TradingEnvironment:
    """`env`, or SpecNotRunnableError (one line naming `environment.type`) if it breaks the
    contract."""
    from tradewind.trainer.entrypoint import SpecNotRunnableError

    breach = contract_breach(env, spec, market)
    if breach is not None or not isinstance(env, TradingEnvironment):
        raise SpecNotRunnableError(f"environment.type: the factory of {spec.type} {breach}")
    return env


def make_vec_env(
    market: Market,
    spec: EnvironmentSpec,
    n_envs: int,
    seed: int,
    random_start: bool | None = None,
) -> VecEnv:
    """`n_envs` environments of `spec.type` over `market`, environment i seeded seed + i:
    one BatchedTradingEnv for the built-in, a DummyVecEnv of the extension's."""
    if not is_extension(spec.type):
        from tradewind.trainer.rl.vec_env import BatchedTradingEnv

        return BatchedTradingEnv(market, spec, n_envs, seed=seed, random_start=random_start)
    envs = [build_environment(market, spec, seed + i, random_start) for i in range(n_envs)]
    return DummyVecEnv([functools.partial(lambda e: e, env) for env in envs])
