"""The operator against the real control plane with kwok GPU nodes: children as specified,
status, restarts from failures, permanent errors, suspend, deadlines, TTL, cascade, and an
operator restart."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import FAIL_EXIT_CODE, FAIL_LABEL, FAIL_REASON, HOLD_LABEL

pytestmark = pytest.mark.integration


def _run(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def _hold() -> dict[str, Any]:
    return {"labels": {HOLD_LABEL: "true"}}


def _fail(exit_code: int, reason: str = "Error") -> dict[str, Any]:
    annotations = {FAIL_EXIT_CODE: str(exit_code), FAIL_REASON: reason}
    return {"labels": {FAIL_LABEL: "true"}, "annotations": annotations}


def _status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl.get(f"trainingrun/{name}", "-n", ns).get("status", {}))


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_children_are_built_as_specified_and_the_run_succeeds(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    run = _run(
        "gpu-run", nodes=2, procsPerNode=4, device="cuda",
        resources={"requests": {"cpu": "4", "memory": "16Gi"}},
        podTemplate={**_hold(), "nodeSelector": {"tradewind.dev/gpu-pool": "a100"},
                     "env": [{"name": "NCCL_DEBUG", "value": "WARN"}]},
    )  # fmt: skip
    kubectl.apply(run, "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/gpu-run", "-n", namespace)
    uid = kubectl.get("trainingrun/gpu-run", "-n", namespace)["metadata"]["uid"]

    job = kubectl.get("job/gpu-run-0", "-n", namespace)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "gpu-run" and pod["nodeSelector"] == {
        "tradewind.dev/gpu-pool": "a100"
    }
    (container,) = pod["containers"]
    assert container["command"][:6] == [
        "python",
        "-m",
        "tradewind.trainer.launch",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=$(PET_NODE_RANK)",
    ]
    assert "--rdzv-endpoint=gpu-run-0-0.gpu-run:29400" in container["command"]
    assert f"--rdzv-id={uid}-0" in container["command"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["memory"] == "16Gi"
    env = {e["name"]: e for e in container["env"]}
    assert env["WORLD_SIZE"]["value"] == "8" and env["PET_NPROC_PER_NODE"]["value"] == "4"
    assert env["MASTER_ADDR"]["value"] == "gpu-run-0-0.gpu-run"
    assert "job-completion-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "minio-credentials"
    assert env["NCCL_DEBUG"]["value"] == "WARN"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {
        "config": "/etc/tradewind", "dshm": "/dev/shm", "state": "/var/tmp/tradewind",
        "tmp": "/tmp", "home": "/home/tradewind",
    }  # fmt: skip
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}

    config = kubectl.get(f"configmap/gpu-run-0-config-{uid}", "-n", namespace)
    assert yaml.safe_load(config["data"]["run.yaml"])["spec"]["nodes"] == 2
    service = kubectl.get("service/gpu-run", "-n", namespace)
    assert (
        service["spec"]["clusterIP"] == "None"
        and service["spec"]["publishNotReadyAddresses"] is True
    )

    status = _status(kubectl, namespace, "gpu-run")
    assert status["phase"] == "Running" and status["nodesReady"] == 2 and status["nodesTotal"] == 2
    assert _condition(status, "Ready")["status"] == "True"

    kubectl.run(
        "label", "pods", "-n", namespace, "-l", "tradewind.dev/run=gpu-run", f"{HOLD_LABEL}-"
    )
    kubectl.wait("--for=condition=Succeeded", "trainingrun/gpu-run", "-n", namespace)
    status = _status(kubectl, namespace, "gpu-run")
    assert (
        status["phase"] == "Succeeded"
        and status["completionTime"]
        and status["progress"]["percent"] == 100
    )
    printed = kubectl.run("get", "trainingrun/gpu-run", "-n", namespace).stdout
    assert "Succeeded" in printed.splitlines()[1]


def test_a_failed_pod_restarts_the_gang_until_max_restarts(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(
        _run("evicted", nodes=2, maxRestarts=2, podTemplate=_fail(137, "Evicted")), "-n", namespace
    )
    kubectl.wait("--for=condition=Failed", "trainingrun/evicted", "-n", namespace, timeout=120)
    status = _status(kubectl, namespace, "evicted")
    assert status["restarts"] == 2 and status["attempt"] == 2
    failed = _condition(status, "Failed")
    assert failed["reason"] == "MaxRestartsReached"
    assert "exit code 137 (Evicted)" in failed["message"]
    assert "pod evicted-2-" in failed["message"]
    events = kubectl.get(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=evicted"
    )["items"]
    assert sum(e["reason"] == "Evicted" for e in events) == 2
    jobs = [j["metadata"]["name"] for j in kubectl.get("jobs", "-n", namespace)["items"]]
    assert jobs == ["evicted-2"]  # earlier attempts were torn down


def test_out_of_memory_fails_at_once_with_its_reason(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """Killed at its memory limit by the kubelet (OOMKilled), or the trainer's MemoryError
    (exit 67): the same run would run out again, so no restart."""
    kubectl.apply(_run("oom", maxRestarts=3, podTemplate=_fail(137, "OOMKilled")), "-n", namespace)
    kubectl.apply(_run("memory-error", maxRestarts=3, podTemplate=_fail(67)), "-n", namespace)
    for name, said in (("oom", "exit code 137 (OOMKilled)"), ("memory-error", "exit code 67")):
        kubectl.wait("--for=condition=Failed", f"trainingrun/{name}", "-n", namespace)
        status = _status(kubectl, namespace, name)
        failed = _condition(status, "Failed")
        assert status["restarts"] == 0 and failed["reason"] == "OutOfMemory"
        assert said in failed["message"] and "not retried" in failed["message"]


def test_a_permanent_exit_code_fails_without_retry(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("bad-config", podTemplate=_fail(64)), "-n", namespace)
    kubectl.wait("--for=condition=Failed", "trainingrun/bad-config", "-n", namespace)
    status = _status(kubectl, namespace, "bad-config")
    assert status["restarts"] == 0
    assert _condition(status, "Failed")["reason"] == "InvalidConfig"


def test_suspend_deletes_pods_and_resume_recreates_them(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("pausable", nodes=2, podTemplate=_hold()), "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/pausable", "-n", namespace)
    kubectl.run(
        "patch",
        "trainingrun/pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": True}}),
    )
    kubectl.wait("--for=condition=Suspended", "trainingrun/pausable", "-n", namespace)
    kubectl.wait("--for=delete", "pods", "-l", "tradewind.dev/run=pausable", "-n", namespace)
    kubectl.run(
        "patch",
        "trainingrun/pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": False}}),
    )
    kubectl.wait("--for=condition=Running", "trainingrun/pausable", "-n", namespace)
    assert _status(kubectl, namespace, "pausable")["attempt"] == 0


def test_active_deadline_fails_the_run(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("slow", activeDeadlineSeconds=3, podTemplate=_hold()), "-n", namespace)
    kubectl.wait("--for=condition=Failed", "trainingrun/slow", "-n", namespace)
    assert _condition(_status(kubectl, namespace, "slow"), "Failed")["reason"] == "DeadlineExceeded"
    kubectl.wait("--for=delete", "job/slow-0", "-n", namespace)


def test_ttl_deletes_a_finished_run_and_its_children(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("short-lived", ttlSecondsAfterFinished=1), "-n", namespace)
    uid = kubectl.get("trainingrun/short-lived", "-n", namespace)["metadata"]["uid"]
    kubectl.wait("--for=delete", "trainingrun/short-lived", "-n", namespace, timeout=120)
    kubectl.wait(
        "--for=delete",
        "job/short-lived-0",
        f"configmap/short-lived-0-config-{uid}",
        "service/short-lived",
        "-n",
        namespace,
    )


def test_delete_cascades_to_every_child(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("doomed", podTemplate=_hold()), "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/doomed", "-n", namespace)
    # No finalizer: the children's ownerReferences are enough, and deletes need no operator.
    meta = kubectl.get("trainingrun/doomed", "-n", namespace)["metadata"]
    assert not meta.get("finalizers")
    kubectl.get(f"configmap/doomed-0-config-{meta['uid']}", "-n", namespace)
    kubectl.run("delete", "trainingrun/doomed", "-n", namespace)
    kubectl.wait(
        "--for=delete",
        "job/doomed-0",
        f"configmap/doomed-0-config-{meta['uid']}",
        "service/doomed",
        "-n",
        namespace,
    )


def test_the_finalizer_of_an_older_operator_is_removed_on_delete(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    run = _run("legacy", podTemplate=_hold())
    run["metadata"]["finalizers"] = ["tradewind.dev/finalizer"]  # as operators <= 0.1 left it
    kubectl.apply(run, "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/legacy", "-n", namespace)
    kubectl.run("delete", "trainingrun/legacy", "-n", namespace, "--wait=false")
    kubectl.wait("--for=delete", "trainingrun/legacy", "job/legacy-0", "-n", namespace)


def test_operator_killed_and_restarted_creates_nothing_twice(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("survivor", nodes=2, podTemplate=_hold()), "-n", namespace)
    kubectl.wait("--for=create", "job/survivor-0", "-n", namespace)
    operator.kill()
    operator.start()
    kubectl.wait("--for=condition=Running", "trainingrun/survivor", "-n", namespace)
    jobs = kubectl.get("jobs", "-n", namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["survivor-0"]
    assert len(kubectl.get("pods", "-n", namespace)["items"]) == 2
    events = kubectl.get(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=survivor"
    )["items"]
    # The status is the record; Events are posted after it and one may be lost to the kill.
    assert sum(e["reason"] == "Created" for e in events) <= 1
    assert _condition(_status(kubectl, namespace, "survivor"), "Created")["status"] == "True"


def test_metrics_liveness_and_json_logs(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    import urllib.request

    kubectl.apply(_run("observed"), "-n", namespace)
    kubectl.wait("--for=condition=Succeeded", "trainingrun/observed", "-n", namespace)

    def succeeded_gauge() -> tuple[str, list[str]]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
        ) as resp:
            text = resp.read().decode()
        prefix = 'tradewind_runs{kind="TrainingRun",phase="Succeeded"}'
        return text, [line for line in text.splitlines() if line.startswith(prefix)]

    # The gauge moves just after the status write that `kubectl wait` sees: poll briefly.
    deadline = time.monotonic() + 30
    text, succeeded = succeeded_gauge()
    while not succeeded and time.monotonic() < deadline:
        time.sleep(0.2)
        text, succeeded = succeeded_gauge()
    assert 'tradewind_reconcile_duration_seconds_count{kind="TrainingRun"}' in text
    assert succeeded and float(succeeded[0].split()[-1]) >= 1
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5
    ) as resp:
        assert resp.status == 200
    lines = [line for line in operator.log.read_text().splitlines() if line.startswith("{")]
    assert lines and all("message" in json.loads(line) for line in lines)


def test_an_rl_ensemble_trains_agents_in_parallel_then_combines(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    run = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "RLRun",
        "metadata": {"name": "ensemble"},
        "spec": {
            "environment": {"actionSpace": "continuous"},
            "agents": [{"name": "ppo", "algorithm": "ppo"}, {"name": "sac", "algorithm": "sac"}],
            "ensemble": {"method": "thompson_sampling"},
        },
    }
    kubectl.apply(run, "-n", namespace)
    kubectl.wait("--for=condition=Succeeded", "rlrun/ensemble", "-n", namespace, timeout=120)
    train = kubectl.get("job/ensemble-rl0", "-n", namespace)  # kind in RLRun child names
    assert train["spec"]["completions"] == 2 and train["status"]["succeeded"] == 2
    combine = kubectl.get("job/ensemble-rl0-combine", "-n", namespace)
    assert combine["status"]["succeeded"] == 1
    assert "--combine" in combine["spec"]["template"]["spec"]["containers"][0]["command"]
    train_done = next(c for c in train["status"]["conditions"] if c["type"] == "Complete")
    assert combine["metadata"]["creationTimestamp"] >= train_done["lastTransitionTime"]


def test_status_follows_the_runs_mlflow_metrics(
    kubectl: Kubectl, operator: OperatorProcess, stack: DevStack, namespace: str
) -> None:
    from mlflow.tracking import MlflowClient

    kubectl.apply(_run("tracked", training={"epochs": 10}, podTemplate=_hold()), "-n", namespace)
    kubectl.wait("--for=condition=Running", "trainingrun/tracked", "-n", namespace)
    client = MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tradewind")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("tradewind")
    )
    uid = kubectl.get("trainingrun/tracked", "-n", namespace)["metadata"]["uid"]
    tags = {"tradewind.name": "tracked", "tradewind.namespace": namespace,
            "tradewind.checkpoint.latest": "s3://tradewind/x/step-0000000004"}  # fmt: skip
    mlflow_run = client.create_run(experiment_id, tags=tags | {"tradewind.uid": uid})
    for epoch, loss in ((1, 0.9), (2, 0.7), (3, 0.61), (4, 0.55)):
        client.log_metric(mlflow_run.info.run_id, "val_loss", loss, step=epoch)
        client.log_metric(mlflow_run.info.run_id, "epoch", epoch, step=epoch)
    # a newer MLflow run of another run of that name (another uid) is never read
    other = client.create_run(experiment_id, tags=tags | {"tradewind.uid": "another-uid"})
    client.log_metric(other.info.run_id, "epoch", 9, step=9)
    kubectl.wait(
        "--for=jsonpath={.status.progress.percent}=40",
        "trainingrun/tracked",
        "-n",
        namespace,
        timeout=60,
    )
    status = _status(kubectl, namespace, "tracked")
    assert status["progress"]["epoch"] == 4 and status["progress"]["totalEpochs"] == 10
    assert status["headlineMetric"] == "val_loss=0.55" and status["metrics"]["val_loss"] == 0.55
    assert status["checkpoint"]["latest"] == "s3://tradewind/x/step-0000000004"
    assert status["mlflow"]["runId"] == mlflow_run.info.run_id
    assert status["mlflow"]["url"].endswith(f"/runs/{mlflow_run.info.run_id}")
    assert "val_loss=0.55" in kubectl.run("get", "trainingrun/tracked", "-n", namespace).stdout


def test_runs_managed_by_another_controller_are_left_alone(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_run("elsewhere", managedBy="kueue.x-k8s.io/multikueue"), "-n", namespace)
    kubectl.apply(_run("here"), "-n", namespace)
    kubectl.wait("--for=condition=Succeeded", "trainingrun/here", "-n", namespace)
    assert "status" not in kubectl.get("trainingrun/elsewhere", "-n", namespace)
    assert [j["metadata"]["name"] for j in kubectl.get("jobs", "-n", namespace)["items"]] == [
        "here-0"
    ]
    patch = '{"spec": {"managedBy": "tradewind.dev/operator"}}'
    result = kubectl.run(
        "patch", "trainingrun/elsewhere", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0 and "managedBy cannot change" in result.stderr
