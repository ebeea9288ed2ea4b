"""Extensions (tradewind.extensions): the example package in examples/tradewind-example-ext,
installed into a temporary folder (not the .venv) with the build backend the .venv has, its
model trained from examples/trainingrun-extension.yaml; names and params checked where the
package is installed and accepted unchecked where it is not (the operator); contract
violations of features and models refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.corpus import EXAMPLES_DIR
from tests.extension_package import install_example_extension
from tradewind import extensions
from tradewind.api import ManifestError, TrainingRun, parse_resource
from tradewind.trainer.data.errors import DataError

EXAMPLE_MANIFEST = EXAMPLES_DIR / "trainingrun-extension.yaml"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example_extension(tmp_path_factory.mktemp("example-ext"))


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`on_path(folder)`: make the distributions installed in `folder` visible to this
    process's registry; undone (and the registry re-read) after the test."""

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        extensions.registry.cache_clear()

    yield add
    extensions.registry.cache_clear()


def example_manifest(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    for key, value in spec.items():
        doc["spec"][key] = {**doc["spec"].get(key, {}), **value}
    return doc


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_resource(doc, "m.yaml", extensions.validation_context())
    return info.value.problems


# --- the example package trains -----------------------------------------------------------


def test_example_extension_model_trains_from_a_manifest_naming_it(
    example_site: Path, tmp_path: Path
) -> None:
    doc = example_manifest(training={"epochs": 2}, tracking={"systemMetrics": False})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "PYTHONPATH": str(example_site),
        "TRADEWIND_CACHE": str(tmp_path / "cache"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [
            sys.executable, "-m", "tradewind.trainer", "--config", str(config),
            "--state-dir", str(tmp_path / "state"), "--result", str(tmp_path / "result.json"),
        ],
        env=env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "result.json").read_text())
    assert 0.0 <= summary["metrics"]["test_accuracy"] <= 1.0
    assert summary["metrics"]["epoch"] == 2
    assert set(summary["backtest"]) >= {"model", "buy_and_hold"}
    step = tmp_path / "state" / "checkpoints" / "extension" / "step-0000000002" / "state.pt"
    weights = torch.load(step, weights_only=True)["model"]
    # TinyMLP's encoder: Linear(2 x 3 features -> params.hidden 16); the three features are
    # returns, rsi and the extension's range_position
    assert weights["encoder.0.weight"].shape == (16, 6)
    assert not any(k.startswith(("cnn.", "lstm.")) for k in weights)


def test_validate_cli_checks_names_and_params_where_the_package_is_installed(
    example_site: Path, tmp_path: Path
) -> None:
    def validate(doc: dict[str, Any], pythonpath: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(doc))
        return subprocess.run(
            [str(Path(sys.executable).parent / "tradewind"), "validate", "-f", str(path)],
            env={**os.environ, "PYTHONPATH": pythonpath, "COLUMNS": "400"},
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    ok = validate(example_manifest(), str(example_site))
    assert ok.returncode == 0, ok.stderr
    bad = validate(example_manifest(model={"params": {"hidden": 0}}), str(example_site))
    assert bad.returncode == 1
    (line,) = bad.stderr.strip().splitlines()
    assert "spec.model.params.hidden: Input should be greater than or equal to 1" in line
    missing = validate(example_manifest(), "")  # the package is not installed
    assert missing.returncode == 1
    assert "spec.model.type: 'tw_example.tiny_mlp' is not a registered model" in missing.stderr
    assert "(no extension of 'tw_example' is installed here)" in missing.stderr


# --- validation, in process ----------------------------------------------------------------


def test_unknown_extension_names_fail_with_one_line_naming_field_and_registered_names(
    example_site: Path, on_path: Any
) -> None:
    on_path(example_site)
    doc = example_manifest(model={"type": "tw_example.tiny_cnn"})
    doc["spec"]["data"]["features"] = ["returns", "tw_example.range_pos"]
    doc["spec"]["data"]["source"] = "tw_example.random_walks"
    lines = problems(doc)
    assert len(lines) == 2, lines  # one per model: data (source first), model
    source, model = lines
    assert source.startswith("m.yaml: spec.data.source: 'tw_example.random_walks' is not a")
    assert source.endswith("registered: tw_example.random_walk")
    assert model.startswith("m.yaml: spec.model.type: 'tw_example.tiny_cnn' is not a registered")
    assert model.endswith("registered: tw_example.tiny_mlp")
    doc["spec"]["data"]["source"] = "tw_example.random_walk"
    (feature,) = problems(doc)[:1]
    assert feature.startswith("m.yaml: spec.data.features[1]: 'tw_example.range_pos' is not")
    assert feature.endswith("registered: tw_example.range_position")


def test_params_are_validated_by_the_extension_params_model(
    example_site: Path, on_path: Any
) -> None:
    on_path(example_site)
    run = parse_resource(example_manifest(), "m.yaml", extensions.validation_context())
    assert isinstance(run, TrainingRun)
    assert run.spec.model.params == {"hidden": 16, "activation": "relu"}
    (line,) = problems(example_manifest(model={"params": {"hidden": 0}}))
    assert line == (
        "m.yaml: spec.model.params.hidden: Input should be greater than or equal to 1 (got 0)"
    )
    (line,) = problems(example_manifest(model={"params": {"width": 3}}))
    assert line.startswith("m.yaml: spec.model.params.width: Extra inputs are not permitted")


def test_the_operator_accepts_extension_names_without_the_package() -> None:
    from tradewind.operator.reconcile import parse_run

    doc = example_manifest(model={"params": {"hidden": 123456789, "anything": [1, 2]}})
    run = parse_run({**doc, "metadata": {"name": "extension", "namespace": "default"}})
    assert run.spec.model.type == "tw_example.tiny_mlp"
    assert run.spec.model.params["anything"] == [1, 2]


@pytest.mark.parametrize(
    ("patch", "line"),
    [
        ({"model": {"type": "transformer"}}, "spec.model.type: Input should be 'cnn', 'lstm'"),
        ({"model": {"type": "cnn", "params": {"x": 1}}}, "spec.model.params: params are for an"),
        ({"model": {"type": "TW.Model"}}, "or an extension's <package>.<name> (got 'TW.Model')"),
    ],
)
def test_names_without_a_dot_are_the_builtins_and_they_take_no_params(
    patch: dict[str, Any], line: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_resource(example_manifest(**patch), "m.yaml")
    (problem,) = info.value.problems
    assert line in problem


# --- contract violations (a fake package written here) -------------------------------------

FAKE_MODULE = """
from torch import nn
from tradewind.extensions import feature, model


@feature()
def peek(bars):
    return bars["close"].shift(-1) / bars["close"]


@feature()
def short(bars):
    return bars["close"].iloc[1:]


@feature(columns=("up", "down"))
def moves(bars):
    change = bars["close"].diff()
    return change.clip(lower=0).to_frame("up").assign(down=(-change).clip(lower=0))


@model()
def linear(*, n_features, lookback, heads, dropout, params):
    return nn.Linear(n_features, heads.num_classes)
"""


@pytest.fixture
def fake_package(tmp_path: Path, on_path: Any) -> None:
    site = tmp_path / "fake-site"
    dist = site / "tw_fake-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "tw_fake.py").write_text(FAKE_MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tw-fake\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [tradewind.features]
            tw_fake.peek = tw_fake:peek
            tw_fake.short = tw_fake:short
            tw_fake.moves = tw_fake:moves
            [tradewind.models]
            tw_fake.linear = tw_fake:linear
            """
        )
    )
    on_path(site)
    yield
    sys.modules.pop("tw_fake", None)


def _bars(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return pd.DataFrame(
        {
            "symbol": pd.Categorical(["A"] * n),
            "timestamp": pd.date_range("2020-01-01", periods=n, freq="D"),
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": np.full(n, 1000.0),
        }
    )


@pytest.mark.usefixtures("fake_package")
def test_a_feature_that_reads_later_bars_is_refused() -> None:
    from tradewind.trainer.data.features import engineer_features

    with pytest.raises(DataError, match=r"feature tw_fake\.peek reads later bars"):
        engineer_features(_bars(), ["returns", "tw_fake.peek"])


@pytest.mark.usefixtures("fake_package")
def test_a_feature_must_return_one_row_per_bar() -> None:
    from tradewind.trainer.data.features import engineer_features

    with pytest.raises(DataError, match=r"tw_fake\.short must return one row per bar"):
        engineer_features(_bars(), ["tw_fake.short"])


@pytest.mark.usefixtures("fake_package")
def test_extension_columns_follow_the_builtins_with_their_values() -> None:
    from tradewind.trainer.data.features import engineer_features

    bars = _bars()
    table = engineer_features(bars, ["tw_fake.moves", "returns"])
    assert table.feature_names == ("returns", "tw_fake.moves.up", "tw_fake.moves.down")
    change = np.diff(bars["close"].to_numpy())
    rows = len(table.values)  # the last `rows` bars (warm-up dropped)
    np.testing.assert_allclose(table.values[:, 1], np.clip(change, 0, None)[-rows:], rtol=1e-5)


@pytest.mark.usefixtures("fake_package")
def test_a_model_factory_must_return_a_trading_model() -> None:
    from tradewind.api.training import ModelSpec
    from tradewind.trainer.entrypoint import SpecNotRunnableError
    from tradewind.trainer.models import build_model

    with pytest.raises(SpecNotRunnableError, match=r"returned Linear, not a \S*TradingModel"):
        build_model(ModelSpec(type="tw_fake.linear"), n_features=3, lookback=10)


@pytest.mark.usefixtures("fake_package")
def test_the_trainer_exits_64_naming_the_field_and_the_registered_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tradewind.trainer.entrypoint import EXIT_BAD_CONFIG, main

    doc = example_manifest(model={"type": "tw_fake.lineal", "params": {}})
    doc["spec"]["data"] = {"source": "synthetic"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["--config", str(config), "--state-dir", str(tmp_path)]) == EXIT_BAD_CONFIG
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "spec.model.type: 'tw_fake.lineal' is not a registered model" in line
    assert line.endswith("registered: tw_fake.linear")


def test_uris_with_dots_are_not_taken_for_extensions(example_site: Path, on_path: Any) -> None:
    on_path(example_site)
    for source in ("file:///data/bars.v2.csv", "s3://bucket.eu/bars.parquet"):
        doc = example_manifest()
        doc["spec"]["data"]["source"] = source
        run = parse_resource(doc, "m.yaml", extensions.validation_context())
        assert isinstance(run, TrainingRun)
        assert not extensions.is_extension(source)


def test_an_extension_that_cannot_be_imported_is_one_line_naming_the_field(
    tmp_path: Path, on_path: Any
) -> None:
    site = tmp_path / "broken-site"
    dist = site / "tw_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "tw_broken.py").write_text("import not_a_module_anywhere\n")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tw-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tradewind.models]\ntw_broken.net = tw_broken:net\n")
    on_path(site)
    (line,) = problems(example_manifest(model={"type": "tw_broken.net", "params": {}}))[-1:]
    assert line.startswith("m.yaml: spec.model.type: 'tw_broken.net' (tw_broken:net) cannot be")
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere'" in line


def test_an_rlrun_environment_data_names_extensions_too(example_site: Path, on_path: Any) -> None:
    on_path(example_site)
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": {"name": "rl-extension"},
        "spec": {
            "agents": [{"name": "ppo", "algorithm": "ppo"}],
            "environment": {
                "data": {
                    "source": "tw_example.random_walk",
                    "features": ["returns", "tw_example.range_position"],
                }
            },
        },
    }
    assert parse_resource(doc, "rl.yaml", extensions.validation_context()).kind == "RLRun"
    doc["spec"]["environment"]["data"]["features"][1] = "tw_example.range"
    (line,) = problems(doc)
    assert line.startswith("m.yaml: spec.environment.data.features[1]: 'tw_example.range' is")
