"""`spec.podTemplate`, `spec.accelerator` and `spec.gangScheduling` as `tradewind validate`
sees them: what the operator owns is refused in one line naming the field and saying what to
use instead; the rest of a real cluster's pod template is accepted. The same rules are the
CRD's (x-kubernetes-validations), so `kubectl apply` refuses alike."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tradewind.api import ManifestError, TrainingRun, load_resources
from tradewind.api.crd import build_crd
from tradewind.api.pods import OPERATOR_OWNED, OPERATOR_PATHS, OPERATOR_VOLUMES


def _problem(tmp_path: Any, **spec: Any) -> str:
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "r"}, "spec": spec}  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as info:
        load_resources(path)
    (line,) = info.value.problems
    assert "\n" not in line
    return line.removeprefix(f"{path}: ")


def _valid(tmp_path: Any, **spec: Any) -> TrainingRun:
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "r"}, "spec": spec}  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    (run,) = load_resources(path)
    assert isinstance(run, TrainingRun)
    return run


@pytest.mark.parametrize(
    ("field", "value", "instead"),
    [
        ("containers", [{"name": "trainer", "image": "mine"}], "spec.entrypoint"),
        ("restartPolicy", "OnFailure", "spec.maxRestarts"),
        ("hostname", "rank0", "rendezvous"),
        ("subdomain", "mine", "headless Service"),
        ("setHostnameAsFQDN", True, "rendezvous"),
        ("activeDeadlineSeconds", 60, "spec.activeDeadlineSeconds"),
    ],
)
def test_an_operator_owned_pod_field_is_refused_naming_it_and_what_to_use(
    tmp_path: Any, field: str, value: Any, instead: str
) -> None:
    line = _problem(tmp_path, podTemplate={field: value})
    assert line.startswith(f"spec.podTemplate.{field}: {field} is the operator's: "), line
    assert instead in line


def test_every_operator_owned_field_has_its_rule() -> None:
    rules = build_crd(TrainingRun)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    template = rules["properties"]["spec"]["properties"]["podTemplate"]
    refused = {r["rule"] for r in template["x-kubernetes-validations"]}
    assert {f"!has(self.{f})" for f in OPERATOR_OWNED} <= refused
    assert set(OPERATOR_OWNED) <= set(template["properties"])


@pytest.mark.parametrize("where", ["initContainers", "sidecars"])
def test_a_container_named_trainer_is_refused(tmp_path: Any, where: str) -> None:
    line = _problem(tmp_path, podTemplate={where: [{"name": "trainer", "image": "i"}]})
    assert line.startswith(f"spec.podTemplate.{where}: {where}[].name trainer is the operator's")


def test_container_names_are_unique_across_init_containers_and_sidecars(tmp_path: Any) -> None:
    template = {"initContainers": [{"name": "a", "image": "i"}],
                "sidecars": [{"name": "a", "image": "i"}]}  # fmt: skip
    line = _problem(tmp_path, podTemplate=template)
    assert line == "spec.podTemplate.sidecars: container names must be unique across " + (
        "initContainers and sidecars"
    )


def test_a_container_needs_a_name_and_an_image(tmp_path: Any) -> None:
    line = _problem(tmp_path, podTemplate={"sidecars": [{"name": "a"}]})
    assert line.startswith("spec.podTemplate.sidecars[0].image: "), line


@pytest.mark.parametrize("name", OPERATOR_VOLUMES)
def test_a_volume_named_like_an_operator_volume_is_refused(tmp_path: Any, name: str) -> None:
    line = _problem(tmp_path, podTemplate={"volumes": [{"name": name, "emptyDir": {}}]})
    assert line.startswith("spec.podTemplate.volumes: volumes[].name is one of the operator's")


@pytest.mark.parametrize(
    "path",
    [*OPERATOR_PATHS, "/tmp/", "/etc/tradewind/extra", "/var/tmp/tradewind/ckpt"],
)
def test_a_mount_on_an_operator_path_is_refused(tmp_path: Any, path: str) -> None:
    template = {"volumes": [{"name": "data", "emptyDir": {}}],
                "volumeMounts": [{"name": "data", "mountPath": path}]}  # fmt: skip
    line = _problem(tmp_path, podTemplate=template)
    assert line.startswith("spec.podTemplate.volumeMounts: volumeMounts[].mountPath is one of")


@pytest.mark.parametrize("path", ["/data", "/home/tradewind/.cache/huggingface", "/tmp/x"])
def test_a_mount_beside_or_under_a_scratch_folder_is_fine(tmp_path: Any, path: str) -> None:
    template = {"volumes": [{"name": "data", "emptyDir": {}}],
                "volumeMounts": [{"name": "data", "mountPath": path}]}  # fmt: skip
    _valid(tmp_path, podTemplate=template)


def test_a_real_clusters_pod_template_is_accepted(tmp_path: Any) -> None:
    template = {
        "imagePullSecrets": [{"name": "regcred"}],
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [44]},
        "containerSecurityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
        "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
        "sidecars": [{"name": "exporter", "image": "dcgm-exporter",
                      "ports": [{"containerPort": 9400}]}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "runtimeClassName": "nvidia",
        "hostNetwork": True,
        "hostIPC": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["nfs"]}],
        "envFrom": [{"secretRef": {"name": "wandb"}}],
        "resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": "a100"}],
        "schedulerName": "volcano",
        "terminationGracePeriodSeconds": 300,
        "enableServiceLinks": False,
        "shareProcessNamespace": True,
    }  # fmt: skip
    run = _valid(tmp_path, podTemplate=template)
    pt = run.spec.pod_template
    assert pt.host_ipc is True and pt.host_network is True
    assert pt.sidecars[0].model_dump(by_alias=True)["ports"] == [{"containerPort": 9400}]
    assert pt.resource_claims[0].model_dump(by_alias=True) == template["resourceClaims"][0]


@pytest.mark.parametrize(
    "resource", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "nvidia.com/mig-1g.10gb"]
)
def test_accelerators_by_any_extended_resource_name(tmp_path: Any, resource: str) -> None:
    run = _valid(tmp_path, device="cuda", accelerator={"resource": resource, "perNode": 2})
    assert run.spec.accelerator is not None and run.spec.accelerator.resource == resource


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [
        ({"resource": "gpu"}, "spec.accelerator.resource: String should match pattern"),
        ({"resource": "kubernetes.io/gpu"}, "spec.accelerator.resource: resource is a native"),
        ({"resource": "x.kubernetes.io/gpu"}, "spec.accelerator.resource: resource is a native"),
        ({"resource": "nvidia.com/gpu", "perNode": 0}, "spec.accelerator.perNode: Input should be"),
        ({"perNode": 2}, "spec.accelerator.resource: "),
    ],
)
def test_an_accelerator_that_is_no_device_is_refused(
    tmp_path: Any, accelerator: dict[str, Any], expected: str
) -> None:
    assert _problem(tmp_path, accelerator=accelerator).startswith(expected)


@pytest.mark.parametrize(
    ("gang", "expected"),
    [
        ({"scheduler": "yunikorn"}, "spec.gangScheduling.scheduler: Input should be"),
        ({"scheduler": "volcano", "scheduleTimeoutSeconds": 60},
         "spec.gangScheduling.scheduleTimeoutSeconds: scheduleTimeoutSeconds is a coscheduling"),
        ({"scheduler": "coscheduling", "queue": "q"},
         "spec.gangScheduling.queue: queue is a Volcano setting"),
    ],
)  # fmt: skip
def test_gang_scheduling_settings_belong_to_their_scheduler(
    tmp_path: Any, gang: dict[str, Any], expected: str
) -> None:
    assert _problem(tmp_path, gangScheduling=gang).startswith(expected)
