"""TrainingRunSpec.entrypoint: your own module or command, and its rules, as the apiserver
would check them (the same CEL)."""

from typing import Any

import pytest
import yaml

from tradewind.api import ManifestError, TrainingRun, parse_resource
from tradewind.api.crd import render_crds


def _run(entrypoint: dict[str, Any] | None, **spec: Any) -> TrainingRun:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "own"},
        "spec": {**spec, **({"entrypoint": entrypoint} if entrypoint is not None else {})},
    }
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    return run


def _refused(entrypoint: dict[str, Any], **spec: Any) -> str:
    with pytest.raises(ManifestError) as info:
        _run(entrypoint, **spec)
    return "\n".join(info.value.problems)


def test_a_module_or_a_command_with_args() -> None:
    run = _run({"module": "mypackage.train", "args": ["--lr", "0.1"]}, nodes=2)
    assert run.spec.entrypoint is not None
    assert run.spec.entrypoint.module == "mypackage.train"
    assert run.spec.entrypoint.launcher == "torchrun"
    run = _run({"command": ["python", "/app/train.py"], "launcher": "none"}, nodes=4)
    assert run.spec.entrypoint is not None and run.spec.entrypoint.command == [
        "python",
        "/app/train.py",
    ]
    assert _run(None).spec.entrypoint is None  # the built-in trainer


@pytest.mark.parametrize("entrypoint", [{}, {"module": "a.b", "command": ["python", "x.py"]}])
def test_exactly_one_of_module_and_command(entrypoint: dict[str, Any]) -> None:
    assert "set exactly one of module" in _refused(entrypoint)


def test_a_module_is_a_dotted_python_name() -> None:
    assert "module" in _refused({"module": "my-package.train"})


def test_launcher_none_needs_one_process_per_pod() -> None:
    problems = _refused({"module": "a", "launcher": "none"}, procsPerNode=2)
    assert "entrypoint.launcher none starts one process per pod" in problems
    assert _run({"module": "a", "launcher": "torchrun"}, procsPerNode=2)


def test_the_crd_carries_the_rules() -> None:
    crd = yaml.safe_load(render_crds()["trainingruns.tradewind.dev.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    entrypoint = spec["properties"]["entrypoint"]
    assert set(entrypoint["properties"]) == {"module", "command", "args", "launcher"}
    assert entrypoint["properties"]["launcher"]["enum"] == ["torchrun", "none"]
    assert any("has(self.module) != has(self.command)" in r["rule"]
               for r in entrypoint["x-kubernetes-validations"])  # fmt: skip
    assert any("self.entrypoint.launcher : 'torchrun') != 'none'" in r["rule"]
               for r in spec["x-kubernetes-validations"])  # fmt: skip
