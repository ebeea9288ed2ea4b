"""The container command and environment of a TrainingRun that runs its own code."""

from typing import Any

from tradewind.api import TrainingRun, parse_resource
from tradewind.operator import builders
from tradewind.operator.settings import OperatorSettings

OWNER = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "name": "r",
         "uid": "u-1", "controller": True}  # fmt: skip
WRAPPER = ["python", "-m", "tradewind.trainer.own_code", "--config", "/etc/tradewind/run.yaml",
           "--state-dir", "/var/tmp/tradewind", "--"]  # fmt: skip
TORCHRUN = ["python", "-m", "tradewind.trainer.launch", "--nnodes=2", "--nproc-per-node=1",
            "--node-rank=$(PET_NODE_RANK)", "--rdzv-backend=c10d",
            "--rdzv-endpoint=r-0-0.r:29400", "--rdzv-id=u-1-0"]  # fmt: skip


def _run(entrypoint: dict[str, Any], **spec: Any) -> TrainingRun:
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "r", "namespace": "ns"},
           "spec": {"nodes": 2, "entrypoint": entrypoint, **spec}}  # fmt: skip
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    return run


def _container(run: TrainingRun, settings: OperatorSettings | None = None) -> dict[str, Any]:
    job = builders.build_job(run, 0, "u-1", OWNER, settings or OperatorSettings())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_a_module_under_torchrun() -> None:
    run = _run({"module": "mypackage.train", "args": ["--lr", "0.1"]})
    command = _container(run)["command"]
    assert command == [*WRAPPER, *TORCHRUN, "-m", "mypackage.train", "--lr", "0.1"]


def test_a_command_under_torchrun_runs_without_python() -> None:
    run = _run({"command": ["python", "/app/train.py"], "args": ["--epochs", "3"]})
    command = _container(run)["command"]
    assert command == [*WRAPPER, *TORCHRUN, "--no-python", "python", "/app/train.py",
                       "--epochs", "3"]  # fmt: skip


def test_launcher_none_runs_the_code_once_per_pod() -> None:
    module = _container(_run({"module": "pkg.train", "launcher": "none", "args": ["-x"]}))
    assert module["command"] == [*WRAPPER, "python", "-m", "pkg.train", "-x"]
    command = _container(_run({"command": ["/app/train"], "launcher": "none"}))
    assert command["command"] == [*WRAPPER, "/app/train"]
    env = _env(command)
    # PyTorchJob's variables: the pod's index is the rank, one process per pod.
    index = {"fieldRef": {"fieldPath": builders.COMPLETION_INDEX}}
    assert env["RANK"] == index and env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "r-0-0.r" and env["MASTER_PORT"] == "29400"
    assert env["LOCAL_RANK"] == "0" and env["LOCAL_WORLD_SIZE"] == "1"


def test_the_environment_carries_the_contract_endpoints() -> None:
    settings = OperatorSettings(
        s3_endpoint="http://minio:9000",
        s3_credentials_secret="s3",
        mlflow_tracking_uri="http://mlflow:5000",
        checkpoint_bucket="ckpt",
    )
    env = _env(_container(_run({"module": "pkg.train"}), settings))
    assert env["TRADEWIND_RUN_UID"] == "u-1" and env["PET_NODE_RANK"]
    assert env["TRADEWIND_CHECKPOINT_URI"] == "s3://ckpt"  # the wrapper adds ns/name/uid
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert "LOCAL_RANK" not in env  # torchrun sets it per process


def test_the_built_in_trainer_is_unchanged_without_an_entrypoint() -> None:
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "r", "namespace": "ns"}, "spec": {"nodes": 2}}  # fmt: skip
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    command = _container(run)["command"]
    assert command == [*TORCHRUN, "-m", "tradewind.trainer", "--config",
                       "/etc/tradewind/run.yaml", "--state-dir", "/var/tmp/tradewind"]  # fmt: skip
