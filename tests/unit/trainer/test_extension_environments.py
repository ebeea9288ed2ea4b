"""Extension RL environments (`environment.type: <package>.<name>`, entry point group
`tradewind.environments`): the example package's `tw_example.drawdown_penalty` trains from
examples/rlrun-extension.yaml and is reported, its reward shaped while Tradewind's accounting
is untouched; names and params checked where the package is installed and accepted unchecked
by the operator; factories breaking the contract refused; no edge on a placebo market."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rich.console import Console

from tests.corpus import EXAMPLES_DIR
from tests.extension_package import install_example_extension
from tests.unit.trainer.rl.markets import env_spec, random_market
from tradewind import extensions
from tradewind.api import ManifestError, RLRun, parse_resource

EXAMPLE_MANIFEST = EXAMPLES_DIR / "rlrun-extension.yaml"
KINDS = ["random_walk", "planted_edge"]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example_extension(tmp_path_factory.mktemp("example-ext"))


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`on_path(folder)`: the distributions in `folder` visible to this process's registry."""

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        extensions.registry.cache_clear()

    yield add
    extensions.registry.cache_clear()


def example_manifest(**environment: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["spec"]["environment"] |= environment
    return doc


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_resource(doc, "m.yaml", extensions.validation_context())
    return info.value.problems


# --- the example environment trains and is reported ----------------------------------------


def test_example_environment_trains_from_the_manifest_and_is_reported(
    example_site: Path, tmp_path: Path
) -> None:
    doc = example_manifest()
    doc["spec"] |= {
        "totalTimesteps": 256,
        "nEnvs": 2,
        "eval": {"freq": 256, "episodes": 1},
        "tracking": {"systemMetrics": False},
    }
    doc["spec"]["agents"][0]["hyperparameters"] = {"n_steps": 128, "batch_size": 64}
    doc["spec"]["agents"].append({"name": "a2c", "algorithm": "a2c"})
    doc["spec"]["ensemble"] = {"method": "weighted_average"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "PYTHONPATH": str(example_site),
        "TRADEWIND_CACHE": str(tmp_path / "cache"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def trainer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable, "-m", "tradewind.trainer.rl", "--config", str(config),
                "--state-dir", str(tmp_path / "state"), *args,
            ],
            env=env, capture_output=True, text=True, check=False, cwd=tmp_path,
        )  # fmt: skip

    for index in ("0", "1"):
        trained = trainer("--agent-index", index)
        assert trained.returncode == 0, trained.stderr[-3000:]
    combined = trainer("--combine")
    assert combined.returncode == 0, combined.stderr[-3000:]
    reports = [_rows(json.loads(p.read_text())) for p in tmp_path.rglob("evaluation.json")]
    agents = [rows for rows in reports if "market" in rows[0]]  # combine's table has no market
    assert len(agents) == 2
    for rows in agents:
        assert {row["market"] for row in rows} == {"validation", "test"}
        assert all(np.isfinite(row["sharpe"]) for row in rows)
    (combine,) = [rows for rows in reports if "market" not in rows[0]]
    assert [row["strategy"] for row in combine] == ["ppo", "a2c", "ensemble", "buy_and_hold"]


def _rows(table: Any) -> list[dict[str, Any]]:
    """MLflow's table artifact ({"columns": [...], "data": [[...]]}) as dicts."""
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def test_the_reward_is_shaped_and_the_accounting_is_tradewinds(
    example_site: Path, on_path: Any
) -> None:
    """Step for step with the same actions: the same infos (equity, turnover, costs) as the
    built-in environment; the reward is the built-in one minus penalty x drawdown."""
    from tradewind.trainer.rl import TradingEnvironment
    from tradewind.trainer.rl.extension import build_environment, make_vec_env

    on_path(example_site)
    market = random_market(n_bars=80, n_symbols=2, volatility=0.03)
    spec = env_spec(
        type="tw_example.drawdown_penalty",
        params={"penalty": 2.0},
        episode_length=60,
        transaction_cost=0.001,
    )
    shaped = build_environment(market, spec)
    builtin = TradingEnvironment(market, env_spec(episode_length=60, transaction_cost=0.001))
    assert type(shaped).__name__ == "DrawdownPenalty"
    shaped.reset(seed=0)
    builtin.reset(seed=0)
    actions = np.random.default_rng(1).uniform(-1, 1, (60, 2)).astype(np.float32)
    peak, penalised = 1000.0, 0
    for action in actions:
        obs, reward, _, _, info = shaped.step(action)
        want_obs, want_reward, _, _, want_info = builtin.step(action)
        assert info == want_info
        np.testing.assert_array_equal(obs, want_obs)
        peak = max(peak, info["portfolio_value"])
        drawdown = 1.0 - info["portfolio_value"] / peak
        assert reward == pytest.approx(want_reward - 2.0 * drawdown, abs=1e-12)
        penalised += drawdown > 0
    assert penalised > 10  # the penalty did bite
    vec = make_vec_env(market, spec, 3, seed=5)
    assert [type(e).__name__ for e in vec.envs] == ["DrawdownPenalty"] * 3  # type: ignore[attr-defined]


# --- names and params ----------------------------------------------------------------------


def test_unknown_environment_and_bad_params_are_one_line_naming_the_field(
    example_site: Path, on_path: Any
) -> None:
    on_path(example_site)
    run = parse_resource(example_manifest(), "m.yaml", extensions.validation_context())
    assert isinstance(run, RLRun)
    assert run.spec.environment.type == "tw_example.drawdown_penalty"
    (line,) = problems(example_manifest(type="tw_example.drawdown"))
    assert line.startswith("m.yaml: spec.environment.type: 'tw_example.drawdown' is not a")
    assert line.endswith("(entry point group tradewind.environments); registered: "
                         "tw_example.drawdown_penalty")  # fmt: skip
    (line,) = problems(example_manifest(params={"penalty": -1}))
    assert line == (
        "m.yaml: spec.environment.params.penalty: Input should be greater than or equal to 0 "
        "(got -1)"
    )
    (line,) = problems(example_manifest(params={"penalti": 1}))
    assert line.startswith("m.yaml: spec.environment.params.penalti: Extra inputs are not")


def test_the_operator_accepts_the_dotted_name_without_the_package() -> None:
    from tradewind.operator.reconcile import parse_run

    doc = example_manifest(params={"penalty": -5, "anything": [1]})
    run = parse_run({**doc, "metadata": {"name": "rl-extension", "namespace": "default"}})
    assert isinstance(run, RLRun)
    assert run.spec.environment.type == "tw_example.drawdown_penalty"
    assert run.spec.environment.params == {"penalty": -5, "anything": [1]}


@pytest.mark.parametrize(
    ("environment", "line"),
    [
        ({"type": "gym"}, "spec.environment.type: Input should be 'portfolio', or an extension"),
        ({"type": "portfolio", "params": {"x": 1}}, "spec.environment.params: params are for"),
    ],
)
def test_names_without_a_dot_are_the_builtin_and_it_takes_no_params(
    environment: dict[str, Any], line: str
) -> None:
    doc = example_manifest(**environment)
    with pytest.raises(ManifestError) as info:
        parse_resource(doc, "m.yaml")
    assert any(line in problem for problem in info.value.problems), info.value.problems


# --- the contract --------------------------------------------------------------------------


FAKE_MODULE = """
from tradewind.trainer.rl import TradingEnvironment

class Cheat(TradingEnvironment):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["portfolio_value"] *= 1.01
        return obs, reward, terminated, truncated, info

class Cheaper(TradingEnvironment):
    pass

def cheat(*, market, spec, seed, random_start, params):
    return Cheat(market, spec, seed=seed, random_start=random_start)

def free_costs(*, market, spec, seed, random_start, params):
    free = spec.model_copy(update={"transaction_cost": 0.0, "slippage": 0.0})
    return Cheaper(market, free, seed=seed, random_start=random_start)

def gym(*, market, spec, seed, random_start, params):
    import gymnasium
    return gymnasium.make("CartPole-v1")
"""


@pytest.fixture
def fake_package(tmp_path: Path, on_path: Any) -> Iterator[None]:
    site = tmp_path / "fake-site"
    dist = site / "tw_fake_env-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "tw_fake_env.py").write_text(FAKE_MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tw-fake-env\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [tradewind.environments]
            tw_fake.cheat = tw_fake_env:cheat
            tw_fake.free_costs = tw_fake_env:free_costs
            tw_fake.gym = tw_fake_env:gym
            """
        )
    )
    on_path(site)
    yield
    sys.modules.pop("tw_fake_env", None)


@pytest.mark.usefixtures("fake_package")
@pytest.mark.parametrize(
    ("name", "breach"),
    [
        ("tw_fake.gym", r"returned \w+, not a tradewind\.trainer\.rl\.TradingEnvironment"),
        ("tw_fake.cheat", r"Cheat overrides step: an extension's environment may override only"),
        ("tw_fake.free_costs", r"must be built on the market and spec the factory is given"),
    ],
)
def test_a_factory_breaking_the_contract_is_refused_naming_the_field(
    name: str, breach: str
) -> None:
    from tradewind.trainer.entrypoint import SpecNotRunnableError
    from tradewind.trainer.rl.extension import build_environment

    spec = env_spec(type=name)
    with pytest.raises(SpecNotRunnableError) as info:
        build_environment(random_market(), spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"environment.type: the factory of {name} ")
    assert re.search(breach, message), message


# --- placebo -------------------------------------------------------------------------------


def test_the_extension_environment_shows_no_edge_on_a_no_edge_placebo_market(
    example_site: Path, on_path: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tradewind placebo` on the example manifest: its agent, trained and reported in the
    extension's environment, shows no edge on the random walk, and finds the planted one
    (so the no-edge result is not an agent that cannot trade)."""
    from tradewind.placebo import Figures, Resource, check, run_paths

    on_path(example_site)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "cache"))
    doc = example_manifest(lookbackWindow=10, episodeLength=100)
    doc["spec"]["environment"]["data"] = {
        "source": "synthetic",
        "synthetic": {"numSymbols": 1, "numBars": 1500},
        "features": ["returns", "log_returns", "tw_example.range_position"],
    }
    doc["spec"] |= {
        "seed": 7,
        "totalTimesteps": 8000,
        "nEnvs": 4,
        "eval": {"freq": 4000, "episodes": 1},
        "checkpoint": {"interval": 100},
        "tracking": {"systemMetrics": False},
    }
    doc["spec"]["agents"][0]["hyperparameters"] = {"n_steps": 128}
    run = parse_resource(doc, "m.yaml", extensions.validation_context())
    assert isinstance(run, RLRun)
    environments: list[tuple[str, dict[str, Any]]] = []

    def runner(placebo: Resource, state_dir: Path, console: Console) -> Figures:
        assert isinstance(placebo, RLRun)
        environments.append((placebo.spec.environment.type, placebo.spec.environment.params))
        return run_paths(placebo, state_dir, console)

    results = check(run, KINDS, tmp_path, Console(quiet=True), runner=runner)
    assert environments == [("tw_example.drawdown_penalty", {"penalty": 0.5})] * len(KINDS)
    table = [(r.market, r.path, round(r.probability, 3), r.ok) for r in results]
    assert [(r.market, r.path) for r in results] == [(k, "rl ppo") for k in KINDS], table
    assert all(r.ok for r in results), table
