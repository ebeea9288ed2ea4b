"""`python -m tradewind.trainer.own_code`: the environment your code gets, its exit code,
and where its checkpoint folder comes from."""

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tradewind.api import TrainingRun, dump_resource, parse_resource
from tradewind.trainer import own_code
from tradewind.trainer.storage import LocalStore

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w')); sys.exit(3)"


def _run(tmp_path: Path, **spec: Any) -> tuple[TrainingRun, Path]:
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "own"},
           "spec": {"entrypoint": {"module": "x"}, **spec}}  # fmt: skip
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    path = tmp_path / "run.yaml"
    path.write_text(dump_resource(run))
    return run, path


@pytest.fixture(autouse=True)
def _outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRADEWIND_RUN_UID", "TRADEWIND_CHECKPOINT_URI", "MLFLOW_TRACKING_URI",
                 "MLFLOW_RUN_ID", "PET_NODE_RANK"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_the_code_gets_the_contract_and_its_exit_code_is_the_wrappers(tmp_path: Path) -> None:
    _, config = _run(tmp_path, tracking={"experiment": "wrapped", "systemMetrics": False})
    state, seen = tmp_path / "state", tmp_path / "env.json"
    argv = ["--config", str(config), "--state-dir", str(state), "--",
            sys.executable, "-c", DUMP_ENV, str(seen)]  # fmt: skip
    assert own_code.main(argv) == 3
    env = json.loads(seen.read_text())
    folder = (state / "checkpoints" / "own").resolve()
    assert env["TRADEWIND_CHECKPOINT_DIR"] == str(folder) and folder.is_dir()
    assert env["TRADEWIND_CHECKPOINT_URI"] == folder.as_uri()
    assert env["TRADEWIND_RUN_CONFIG"] == str(config.resolve())
    assert env["MLFLOW_EXPERIMENT_NAME"] == "wrapped"
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:///")

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.get_run(env["MLFLOW_RUN_ID"])  # node 0 made it, with the run's identity
    assert run.data.tags["tradewind.name"] == "own" and run.info.status == "FAILED"
    assert run.data.params["entrypoint.module"] == "x"


def test_other_nodes_get_no_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_NODE_RANK", "1")
    _, config = _run(tmp_path)
    seen = tmp_path / "env.json"
    argv = ["--config", str(config), "--state-dir", str(tmp_path / "state"), "--",
            sys.executable, "-c", DUMP_ENV, str(seen)]  # fmt: skip
    assert own_code.main(argv) == 3
    env = json.loads(seen.read_text())
    assert "MLFLOW_RUN_ID" not in env and env["MLFLOW_EXPERIMENT_NAME"] == "tradewind"


def test_a_config_without_an_entrypoint_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "builtin"}, "spec": {}}  # fmt: skip
    config.write_text(yaml.safe_dump(doc))
    assert own_code.main(["--config", str(config), "--", "true"]) == 64


def test_resume_from_another_prefix_until_the_run_has_its_own(tmp_path: Path) -> None:
    LocalStore(tmp_path / "other").put("weights.pt", b"pretrained")
    own, other = (tmp_path / "own").as_uri(), (tmp_path / "other").as_uri()
    run, _ = _run(tmp_path, checkpoint={"storage": own, "resumeFrom": other})
    uri, folder, sync = own_code.prepare_checkpoints(run, tmp_path / "state")
    assert (uri, folder, sync) == (own, tmp_path / "own", None)  # a folder: used as is
    assert (folder / "weights.pt").read_bytes() == b"pretrained"
    (folder / "weights.pt").write_bytes(b"fine-tuned")
    own_code.prepare_checkpoints(run, tmp_path / "state")  # a restart: its own files stay
    assert (folder / "weights.pt").read_bytes() == b"fine-tuned"
