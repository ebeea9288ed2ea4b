from typing import Any

import pytest

from tradewind.api import RLRun, TrainingRun, parse_resource
from tradewind.operator import builders
from tradewind.operator.settings import OperatorSettings

OWNER = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "TrainingRun",
    "name": "r",
    "uid": "u-1",
    "controller": True,
}


def _run(**spec: Any) -> TrainingRun:
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {
            "name": "r",
            "namespace": "ns",
            "labels": {"kueue.x-k8s.io/queue-name": "gpu"},
        },
        "spec": spec,
    }
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun)
    return run


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_torchrun_command_and_rendezvous() -> None:
    job = builders.build_job(_run(nodes=3, procsPerNode=2), 1, "u-1", OWNER, OperatorSettings())
    cmd = _container(job)["command"]
    assert cmd[:6] == [
        "python",
        "-m",
        "tradewind.trainer.launch",
        "--nnodes=3",
        "--nproc-per-node=2",
        "--node-rank=$(PET_NODE_RANK)",
    ]
    assert "--rdzv-endpoint=r-1-0.r:29400" in cmd and "--rdzv-id=u-1-1" in cmd
    assert cmd[-6:-4] == ["-m", "tradewind.trainer"]
    assert job["metadata"]["name"] == "r-1" and job["spec"]["completions"] == 3


def test_env_families_and_secret_references() -> None:
    settings = OperatorSettings(
        s3_endpoint="http://minio:9000",
        s3_credentials_secret="s3",
        mlflow_tracking_uri="http://mlflow:5000",
    )
    env = {
        e["name"]: e
        for e in _container(
            builders.build_job(_run(nodes=2, procsPerNode=4), 0, "u", OWNER, settings)
        )["env"]
    }
    assert env["WORLD_SIZE"]["value"] == "8" and env["PET_NNODES"]["value"] == "2"
    assert env["MASTER_ADDR"]["value"] == env["PET_MASTER_ADDR"]["value"] == "r-0-0.r"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"


@pytest.mark.parametrize(("device", "gpus"), [("cuda", "2"), ("cpu", None)])
def test_gpus_follow_procs_per_node_on_cuda(device: str, gpus: str | None) -> None:
    job = builders.build_job(_run(procsPerNode=2, device=device), 0, "u", OWNER, OperatorSettings())
    limits = _container(job).get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpus


def test_pod_template_overrides_and_queue_label() -> None:
    run = _run(
        podTemplate={
            "nodeSelector": {"pool": "a"}, "priorityClassName": "high", "labels": {"team": "q"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
    )  # fmt: skip
    job = builders.build_job(run, 0, "u", OWNER, OperatorSettings())
    pod = job["spec"]["template"]
    assert (
        pod["metadata"]["labels"]["team"] == "q"
        and pod["metadata"]["labels"]["tradewind.dev/run"] == "r"
    )
    assert (
        pod["spec"]["priorityClassName"] == "high"
        and pod["spec"]["tolerations"][0]["operator"] == "Exists"
    )
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "d"}} in pod["spec"]["volumes"]
    assert {"name": "data", "mountPath": "/data", "readOnly": False} in _container(job)[
        "volumeMounts"
    ]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"


def test_configmap_holds_the_run_without_status_and_service_is_headless() -> None:
    run = _run(nodes=2)
    cm = builders.build_configmap(run, 0, OWNER)
    assert "status" not in cm["data"]["run.yaml"] and "nodes: 2" in cm["data"]["run.yaml"]
    svc = builders.build_service(run, OWNER)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert svc["metadata"]["ownerReferences"] == [OWNER]


def test_rlrun_trains_one_agent_per_index() -> None:
    agents = [{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "a2c"}]
    meta = {"name": "rl", "namespace": "ns"}
    doc = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": meta,
        "spec": {"agents": agents},
    }
    run = parse_resource(doc)
    assert isinstance(run, RLRun)
    job = builders.build_job(run, 0, "u", OWNER, OperatorSettings())
    assert job["spec"]["completions"] == 2
    assert _container(job)["command"][:3] == ["python", "-m", "tradewind.trainer.rl"]


def test_run_pods_pull_with_the_operators_secrets_then_the_runs_own() -> None:
    run = _run(podTemplate={"imagePullSecrets": [{"name": "team-registry"}, {"name": "regcred"}]})
    settings = OperatorSettings(image_pull_secrets=["regcred"])
    job = builders.build_job(run, 0, "u-1", OWNER, settings)
    pull = job["spec"]["template"]["spec"]["imagePullSecrets"]
    assert pull == [{"name": "regcred"}, {"name": "team-registry"}]
    plain = builders.build_job(_run(), 0, "u-1", OWNER, OperatorSettings())
    assert "imagePullSecrets" not in plain["spec"]["template"]["spec"]


def test_the_pull_secrets_setting_is_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEWIND_IMAGE_PULL_SECRETS", '["regcred", "other"]')
    assert OperatorSettings().image_pull_secrets == ["regcred", "other"]
