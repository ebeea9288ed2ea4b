"""The pod a run's `podTemplate`, `accelerator` and `gangScheduling` make: a patch over the
operator's pod (added, set or merged, never replacing what the operator owns), devices by
any extended resource name, and a PodGroup per attempt with its pods in it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.operator.test_reconcile import RecordingKube, _body, _reconcile
from tests.unit.operator.test_reconcile import _job as _observed_job
from tradewind.api import RLRun, TrainingRun, parse_resource
from tradewind.api import pods as api_pods
from tradewind.operator import builders, pod_security
from tradewind.operator.kube import Refused
from tradewind.operator.settings import OperatorSettings

OWNER = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "name": "r",
         "uid": "u-1", "controller": True}  # fmt: skip
AGENTS = [{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "a2c"}]


def _run(kind: str = "TrainingRun", **spec: Any) -> TrainingRun | RLRun:
    if kind == "RLRun":
        spec.setdefault("agents", AGENTS)
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "r", "namespace": "ns"}, "spec": spec}  # fmt: skip
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun | RLRun)
    return run


def _job(kind: str = "TrainingRun", attempt: int = 0, **spec: Any) -> dict[str, Any]:
    return builders.build_job(_run(kind, **spec), attempt, "u-1", OWNER, OperatorSettings())


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(job)["containers"]
    return container  # type: ignore[no-any-return]


def test_the_operators_volumes_and_paths_are_the_ones_the_api_refuses() -> None:
    job = _job()
    assert {v["name"] for v in _pod(job)["volumes"]} == set(api_pods.OPERATOR_VOLUMES)
    assert set(pod_security.OPERATOR_VOLUMES) == set(api_pods.OPERATOR_VOLUMES)
    paths = {m["mountPath"] for m in _trainer(job)["volumeMounts"]}
    assert paths == set(api_pods.OPERATOR_PATHS)
    assert _trainer(job)["name"] == api_pods.TRAINER_CONTAINER


def test_init_containers_run_first_then_sidecars_as_native_sidecars() -> None:
    template = {
        "initContainers": [
            {"name": "fetch", "image": "busybox", "command": ["sh", "-c", "cp /src /data"]}
        ],
        "sidecars": [
            {"name": "ship-logs", "image": "fluent-bit", "ports": [{"containerPort": 2020}]}
        ],
    }
    pod = _pod(_job(podTemplate=template))
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["initContainers"] == [
        {"name": "fetch", "image": "busybox", "command": ["sh", "-c", "cp /src /data"],
         "securityContext": restricted},
        {"name": "ship-logs", "image": "fluent-bit", "ports": [{"containerPort": 2020}],
         "securityContext": restricted, "restartPolicy": "Always"},
    ]  # fmt: skip
    assert [c["name"] for c in pod["containers"]] == ["trainer"]
    assert pod["restartPolicy"] == "Never"  # the Job's pod still completes


def test_a_sidecar_always_restarts_whatever_it_says() -> None:
    template = {"sidecars": [{"name": "s", "image": "i", "restartPolicy": "Never"}]}
    (sidecar,) = _pod(_job(podTemplate=template))["initContainers"]
    assert sidecar["restartPolicy"] == "Always"


def test_a_containers_own_security_context_is_merged_over_what_restricted_asks() -> None:
    own = {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}}
    template = {"initContainers": [{"name": "net", "image": "i", "securityContext": own}]}
    (init,) = _pod(_job(podTemplate=template))["initContainers"]
    assert init["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        "runAsUser": 0,
    }


def test_no_init_containers_key_without_any() -> None:
    assert "initContainers" not in _pod(_job())


def test_security_contexts_are_merged_key_by_key_over_the_operators() -> None:
    template = {
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [44],
                            "seccompProfile": {"type": "Localhost", "localhostProfile": "p"}},
        "containerSecurityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
    }  # fmt: skip
    job = _job(podTemplate=template)
    uid = pod_security.TRAINER_UID
    assert _pod(job)["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": 2000,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p"},
        "supplementalGroups": [44],
    }  # fmt: skip
    assert _trainer(job)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
        "readOnlyRootFilesystem": True,
    }


def test_merged_replaces_lists_and_scalars_and_leaves_the_base_alone() -> None:
    base = {"a": {"b": [1], "c": 1}, "d": 1}
    assert pod_security.merged(base, {"a": {"b": [2]}, "d": 2}) == {"a": {"b": [2], "c": 1}, "d": 2}
    assert base == {"a": {"b": [1], "c": 1}, "d": 1}
    assert pod_security.merged(base, None) == base


def test_pod_fields_are_set_as_written_false_included() -> None:
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
              "whenUnsatisfiable": "DoNotSchedule",
              "labelSelector": {"matchLabels": {"tradewind.dev/run": "r"}}}  # fmt: skip
    template = {
        "topologySpreadConstraints": [spread],
        "runtimeClassName": "nvidia",
        "hostIPC": True,
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["ns.svc.cluster.local"]},
        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["registry.local"]}],
        "terminationGracePeriodSeconds": 120,
        "enableServiceLinks": False,
        "shareProcessNamespace": True,
        "schedulerName": "my-scheduler",
    }
    pod = _pod(_job(podTemplate=template))
    assert pod["topologySpreadConstraints"] == [spread]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["hostIPC"] is True
    assert pod["dnsPolicy"] == "None"
    assert pod["dnsConfig"] == template["dnsConfig"]
    assert pod["hostAliases"] == template["hostAliases"]
    assert pod["terminationGracePeriodSeconds"] == 120
    assert pod["enableServiceLinks"] is False
    assert pod["shareProcessNamespace"] is True
    assert pod["schedulerName"] == "my-scheduler"
    assert pod["subdomain"] == builders.service_name(_run())  # still the operator's


def test_unset_pod_fields_are_left_to_kubernetes() -> None:
    pod = _pod(_job())
    unset = ("hostNetwork", "hostIPC", "dnsPolicy", "schedulerName", "runtimeClassName",
             "enableServiceLinks", "terminationGracePeriodSeconds", "resourceClaims")  # fmt: skip
    assert not set(unset) & set(pod)


@pytest.mark.parametrize(
    ("template", "policy"),
    [
        ({"hostNetwork": True}, "ClusterFirstWithHostNet"),
        ({"hostNetwork": True, "dnsPolicy": "Default"}, "Default"),
    ],
)
def test_host_network_resolves_cluster_names_unless_told_otherwise(
    template: dict[str, Any], policy: str
) -> None:
    pod = _pod(_job(podTemplate=template))
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == policy


def test_env_from_goes_to_the_trainer_and_operator_env_stays() -> None:
    env_from = [
        {"configMapRef": {"name": "settings"}},
        {"secretRef": {"name": "keys"}, "prefix": "K_"},
    ]
    trainer = _trainer(_job(podTemplate={"envFrom": env_from}))
    assert trainer["envFrom"] == env_from
    assert any(e["name"] == "MASTER_ADDR" for e in trainer["env"])  # env wins over envFrom


def test_resource_claims_reach_the_pod_and_the_trainer() -> None:
    claims = [{"name": "gpus", "resourceClaimTemplateName": "a100-pair"}]
    job = _job(podTemplate={"resourceClaims": claims})
    assert _pod(job)["resourceClaims"] == claims
    assert _trainer(job)["resources"] == {"claims": [{"name": "gpus"}]}


def test_labels_and_annotations_add_to_the_operators() -> None:
    template = {"labels": {"team": "quant", builders.RUN_LABEL: "other"},
                "annotations": {"prometheus.io/scrape": "true"}}  # fmt: skip
    meta = _job(podTemplate=template)["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "quant"
    assert meta["labels"][builders.RUN_LABEL] == "r"  # the operator's label wins
    assert meta["annotations"] == {"prometheus.io/scrape": "true"}


# --- accelerators ---------------------------------------------------------------------------


def _devices(job: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    resources = _trainer(job).get("resources", {})
    return resources.get("requests", {}), resources.get("limits", {})


def test_cuda_without_accelerator_is_one_nvidia_gpu_per_process() -> None:
    requests, limits = _devices(_job(device="cuda", procsPerNode=4))
    assert requests == limits == {"nvidia.com/gpu": "4"}


def test_cpu_without_accelerator_gets_no_device() -> None:
    assert _devices(_job(procsPerNode=4)) == ({}, {})


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [
        ({"resource": "amd.com/gpu"}, {"amd.com/gpu": "2"}),  # perNode = procsPerNode
        ({"resource": "nvidia.com/gpu", "perNode": 8}, {"nvidia.com/gpu": "8"}),
        ({"resource": "nvidia.com/mig-1g.10gb", "perNode": 1}, {"nvidia.com/mig-1g.10gb": "1"}),
        ({"resource": "gpu.intel.com/i915", "perNode": 3}, {"gpu.intel.com/i915": "3"}),
    ],
)
def test_an_accelerator_is_requested_and_limited_by_its_own_name_and_count(
    accelerator: dict[str, Any], expected: dict[str, str]
) -> None:
    job = _job(device="cuda", procsPerNode=2, accelerator=accelerator,
               resources={"requests": {"cpu": "4"}, "limits": {"memory": "8Gi"}})  # fmt: skip
    requests, limits = _devices(job)
    assert requests == {"cpu": "4", **expected}
    assert limits == {"memory": "8Gi", **expected}
    assert "nvidia.com/gpu" not in limits or "nvidia.com/gpu" in expected


def test_an_rl_agents_pod_gets_one_device_unless_told() -> None:
    assert _devices(_job("RLRun", accelerator={"resource": "amd.com/gpu"}))[1] == {
        "amd.com/gpu": "1"
    }
    job = _job("RLRun", accelerator={"resource": "amd.com/gpu", "perNode": 2})
    assert _devices(job)[1] == {"amd.com/gpu": "2"}


def test_an_accelerator_with_device_cpu_still_reaches_the_pod() -> None:
    assert _devices(_job(accelerator={"resource": "habana.ai/gaudi", "perNode": 8}))[1] == {
        "habana.ai/gaudi": "8"
    }


# --- gang scheduling ------------------------------------------------------------------------


def test_no_gang_no_pod_group() -> None:
    run = _run(nodes=2)
    assert builders.build_pod_group(run, 0, OWNER) is None
    assert builders.pod_group_resource(run) is None
    meta = _job(nodes=2)["spec"]["template"]["metadata"]
    assert builders.COSCHEDULING_GROUP_LABEL not in meta["labels"]
    assert builders.VOLCANO_GROUP_ANNOTATION not in meta["annotations"]


def test_volcano_pod_group_and_its_pods() -> None:
    gang = {"scheduler": "volcano", "queue": "research"}
    template = {"priorityClassName": "training"}
    run = _run(nodes=4, gangScheduling=gang, podTemplate=template)
    group = builders.build_pod_group(run, 2, OWNER)
    assert group == {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": {"name": "r-2", "namespace": "ns", "labels": builders.labels(run, 2, "train"),
                     "ownerReferences": [OWNER]},
        "spec": {"minMember": 4, "queue": "research", "priorityClassName": "training"},
    }  # fmt: skip
    assert builders.pod_group_resource(run) == "PodGroup.scheduling.volcano.sh"
    job = _job(nodes=4, attempt=2, gangScheduling=gang, podTemplate=template)
    assert group["metadata"]["name"] == job["metadata"]["name"]
    meta = job["spec"]["template"]["metadata"]
    assert meta["annotations"][builders.VOLCANO_GROUP_ANNOTATION] == "r-2"
    assert builders.COSCHEDULING_GROUP_LABEL not in meta["labels"]
    assert _pod(job)["schedulerName"] == "volcano"


def test_coscheduling_pod_group_and_its_pods() -> None:
    gang = {"scheduler": "coscheduling", "scheduleTimeoutSeconds": 300}
    run = _run(nodes=3, gangScheduling=gang)
    group = builders.build_pod_group(run, 0, OWNER)
    assert group is not None
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "r-0"
    assert group["metadata"]["ownerReferences"] == [OWNER]
    assert group["spec"] == {"minMember": 3, "scheduleTimeoutSeconds": 300}
    assert builders.pod_group_resource(run) == "PodGroup.scheduling.x-k8s.io"
    job = _job(nodes=3, gangScheduling=gang)
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"][builders.COSCHEDULING_GROUP_LABEL] == "r-0"
    assert builders.VOLCANO_GROUP_ANNOTATION not in meta["annotations"]
    assert _pod(job)["schedulerName"] == "scheduler-plugins-scheduler"
    assert builders.COSCHEDULING_GROUP_LABEL not in job["metadata"]["labels"]  # pods only


def test_the_gang_schedulers_name_gives_way_to_the_templates() -> None:
    job = _job(gangScheduling={"scheduler": "coscheduling"},
               podTemplate={"schedulerName": "default-scheduler"})  # fmt: skip
    assert _pod(job)["schedulerName"] == "default-scheduler"


def test_an_rl_gang_is_its_agents_and_the_combine_pod_is_not_in_it() -> None:
    gang = {"scheduler": "coscheduling"}
    run = _run("RLRun", gangScheduling=gang, ensemble={"method": "combined"})
    group = builders.build_pod_group(run, 0, OWNER)
    assert group is not None and group["spec"]["minMember"] == len(AGENTS)
    combine = builders.build_combine_job(run, 0, "u-1", OWNER, OperatorSettings())
    meta = combine["spec"]["template"]["metadata"]
    assert builders.COSCHEDULING_GROUP_LABEL not in meta["labels"]
    assert _pod(combine)["schedulerName"] == "scheduler-plugins-scheduler"
    volcano = _run(
        "RLRun", gangScheduling={"scheduler": "volcano"}, ensemble={"method": "combined"}
    )
    combine = builders.build_combine_job(volcano, 0, "u-1", OWNER, OperatorSettings())
    assert (
        builders.VOLCANO_GROUP_ANNOTATION
        not in combine["spec"]["template"]["metadata"]["annotations"]
    )


# --- the PodGroup in a reconcile ----------------------------------------------------------


def _gang_body(scheduler: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = _body()
    body["spec"]["gangScheduling"] = {"scheduler": scheduler}
    if status is not None:
        body["status"] = status
    return body


def test_a_gang_runs_pod_group_is_created_before_its_job() -> None:
    kube = RecordingKube()
    _reconcile(_gang_body("volcano"), kube)
    creates = [c for c in kube.calls if c[0] == "create"]
    assert creates == [("create", k) for k in ("ConfigMap", "Service", "PodGroup", "Job")]


def test_a_refused_pod_group_creates_no_job_and_says_why() -> None:
    missing = Refused(404, "the server could not find the requested resource", False)
    kube = RecordingKube(refuse={"PodGroup": missing})
    decision = _reconcile(_gang_body("coscheduling"), kube)
    assert ("create", "Job") not in kube.calls
    created = next(c for c in decision.status.conditions if c.type == "Created")
    assert (created.status, created.reason) == ("False", "CreateFailed")
    assert "could not find the requested resource" in created.message


def test_a_stale_attempts_pod_group_goes_with_its_job() -> None:
    kube = RecordingKube()
    body = _gang_body("coscheduling", {"phase": "Restarting", "attempt": 1, "restarts": 1})
    _reconcile(body, kube, jobs=[_observed_job()])
    deletes = [c[1] for c in kube.calls if c[0] == "delete"]
    assert "Job/r-0" in deletes
    assert "PodGroup.scheduling.x-k8s.io/r-0" in deletes
