from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.corpus import example_paths, invalid_cases
from tests.extension_package import install_example_extension
from tradewind.cli import app
from tradewind.extensions import registry

runner = CliRunner()


def test_validate_accepts_every_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # examples/trainingrun-extension.yaml names the example extension package's model,
    # feature and data source: validate checks them where the package is installed
    monkeypatch.syspath_prepend(str(install_example_extension(tmp_path)))
    registry.cache_clear()
    args = ["validate"] + [a for p in example_paths() for a in ("-f", str(p))]
    try:
        result = runner.invoke(app, args)
    finally:
        monkeypatch.undo()
        registry.cache_clear()
    assert result.exit_code == 0, result.output
    assert result.output.count("valid ") == len(example_paths())


def test_validate_prints_one_line_per_problem_and_exits_1() -> None:
    case = next(c for c in invalid_cases() if c.name == "sw-path-not-in-template")
    result = runner.invoke(app, ["validate", "-f", str(case.path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert f"error: {case.path}: spec.searchSpace[training.learningRate]: " in lines[0]
    assert "Traceback" not in result.output


def test_validate_reports_a_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    result = runner.invoke(app, ["validate", "-f", str(tmp_path / "nope.yaml"), "-f", str(bad)])
    assert result.exit_code == 1
    assert "cannot read file" in result.output
    assert "not valid YAML" in result.output


def test_validate_unknown_kind(tmp_path: Path) -> None:
    doc = tmp_path / "job.yaml"
    doc.write_text("apiVersion: tradewind.dev/v1alpha1\nkind: Job\nmetadata: {name: x}\n")
    result = runner.invoke(app, ["validate", "-f", str(doc)])
    assert result.exit_code == 1
    assert "kind: must be one of TrainingRun, RLRun, Sweep (got 'Job')" in result.output


def test_validate_show_prints_defaults() -> None:
    path = next(p for p in example_paths() if p.stem == "trainingrun-quickstart")
    result = runner.invoke(app, ["validate", "-f", str(path), "--show"])
    assert result.exit_code == 0
    assert "optimizer:" in result.output and "name: adamw" in result.output


def test_crds_check_detects_a_stale_folder(tmp_path: Path) -> None:
    assert runner.invoke(app, ["crds", "-o", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "-o", str(tmp_path), "--check"]).exit_code == 0
    crd = next(tmp_path.glob("trainingruns*.yaml"))
    crd.write_text(crd.read_text().replace("hybrid", "hybrid2"))
    result = runner.invoke(app, ["crds", "-o", str(tmp_path), "--check"])
    assert result.exit_code == 1 and "stale" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and "tradewind.dev/v1alpha1" in result.output


def test_the_operator_watches_tradewind_namespaces_unless_told_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tradewind.operator.loop as loop

    watched: list[list[str]] = []
    monkeypatch.setattr(loop, "run_operator", lambda namespaces, *_: watched.append(namespaces))
    monkeypatch.setenv("TRADEWIND_NAMESPACES", '["team-a", "team-b"]')
    assert runner.invoke(app, ["operator"]).exit_code == 0
    assert runner.invoke(app, ["operator", "-n", "team-c"]).exit_code == 0
    monkeypatch.delenv("TRADEWIND_NAMESPACES")
    assert runner.invoke(app, ["operator"]).exit_code == 0
    assert watched == [["team-a", "team-b"], ["team-c"], []]


def test_every_command_summary_is_one_line() -> None:
    # a command list shows the first paragraph of each command's help as it is written,
    # line breaks included: a summary that wraps in the source breaks mid-sentence there
    import click
    import typer.main

    def commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
        found = []
        for name, command in group.commands.items():
            found.append((f"{prefix} {name}", command))
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix} {name}")
        return found

    wrapped = [
        name
        for name, command in commands(typer.main.get_command(app), "tradewind")
        if "\n" in (command.help or "").strip().split("\n\n")[0]
    ]
    assert wrapped == []


def test_placebo_runs_the_manifest_under_several_seeds_and_judges_them_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from tests.tiny import tiny_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(tiny_run(epochs=1)))
    args = ["placebo", "-f", str(manifest), "-m", "random_walk", "--state-dir", str(tmp_path)]
    refused = runner.invoke(app, [*args, "--seeds", "0"])
    assert refused.exit_code == 2 and "--seeds" in refused.output
    result = runner.invoke(app, [*args, "--seeds", "2", "--seed", "5"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "placebo market random_walk, seed 5" in result.output
    assert "placebo market random_walk, seed 6" in result.output
    assert "Stouffer" in result.output
    assert (tmp_path / "placebo" / "random_walk" / "seed-6").is_dir()
