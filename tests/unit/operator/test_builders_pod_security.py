"""Training pods as PodSecurity `restricted` wants them: non-root, no privilege escalation,
no capabilities, RuntimeDefault seccomp, a read-only root with emptyDirs where the trainer
writes, a bounded `/dev/shm`, and a token only for a run that names its ServiceAccount."""

from __future__ import annotations

from typing import Any

import pytest

from tradewind.api import ManifestError, RLRun, TrainingRun, parse_resource
from tradewind.operator import builders, pod_security
from tradewind.operator.settings import OperatorSettings

OWNER = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "RLRun", "name": "r", "uid": "u",
         "controller": True}  # fmt: skip
AGENTS = [{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "a2c"}]


def _parse(kind: str, **spec: Any) -> TrainingRun | RLRun:
    if kind == "RLRun":
        spec.setdefault("agents", AGENTS)
    doc = {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "r", "namespace": "ns"}, "spec": spec}  # fmt: skip
    run = parse_resource(doc)
    assert isinstance(run, TrainingRun | RLRun)
    return run


def _jobs(**spec: Any) -> list[dict[str, Any]]:
    """The training Jobs of a TrainingRun and an RLRun, and an ensemble's combine Job."""
    settings = OperatorSettings()
    ensemble = _parse("RLRun", ensemble={"method": "combined"}, **spec)
    return [
        builders.build_job(_parse("TrainingRun", **spec), 0, "u", OWNER, settings),
        builders.build_job(_parse("RLRun", **spec), 0, "u", OWNER, settings),
        builders.build_combine_job(ensemble, 0, "u", OWNER, settings),
    ]


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("job", _jobs(), ids=["training", "rl", "combine"])
def test_every_pod_runs_non_root_without_privileges(job: dict[str, Any]) -> None:
    pod = _pod(job)
    uid = pod_security.TRAINER_UID
    assert uid != 0
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod


@pytest.mark.parametrize("job", _jobs(), ids=["training", "rl", "combine"])
def test_the_trainer_writes_only_on_emptydirs(job: dict[str, Any]) -> None:
    """The root filesystem is read-only: the state dir the command names, HOME and /tmp are
    each an emptyDir; the config is mounted read-only."""
    pod = _pod(job)
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    command = container["command"]
    state_dir = command[command.index("--state-dir") + 1]
    for path in (state_dir, env["HOME"], "/tmp", "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly"), path
    assert mounts[builders.CONFIG_DIR]["readOnly"] is True
    writable = {p for p, m in mounts.items() if "emptyDir" in volumes[m["name"]]}
    assert writable == {builders.STATE_DIR, pod_security.HOME_DIR, "/tmp", "/dev/shm"}
    assert env["TRADEWIND_STATE_DIR"] == builders.STATE_DIR
    assert set(volumes) == set(pod_security.OPERATOR_VOLUMES)


@pytest.mark.parametrize(
    ("resources", "limit"),
    [
        ({}, pod_security.SHM_DEFAULT_LIMIT),
        ({"requests": {"memory": "8Gi"}}, "8Gi"),
        ({"requests": {"memory": "8Gi"}, "limits": {"memory": "12Gi"}}, "12Gi"),
    ],
)
def test_shared_memory_is_capped_by_the_pods_memory(resources: dict[str, Any], limit: str) -> None:
    for job in _jobs(resources=resources):
        shm = next(v for v in _pod(job)["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": limit}


def test_a_named_service_account_gets_its_token() -> None:
    for job in _jobs(podTemplate={"serviceAccountName": "trainer"}):
        pod = _pod(job)
        assert pod["serviceAccountName"] == "trainer"
        assert pod["automountServiceAccountToken"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_user_env_and_volumes_add_to_the_security_settings_without_replacing_them() -> None:
    template = {
        "env": [{"name": "HOME", "value": "/data/home"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    for job in _jobs(podTemplate=template):
        pod = _pod(job)
        (container,) = pod["containers"]
        homes = [e["value"] for e in container["env"] if e["name"] == "HOME"]
        assert homes == [pod_security.HOME_DIR, "/data/home"]  # the user's, last, wins
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsUser"] == pod_security.TRAINER_UID


@pytest.mark.parametrize(
    "field",
    [
        {"automountServiceAccountToken": True},
        {"containers": [{"name": "x", "securityContext": {"privileged": True}}]},
    ],
)
def test_pod_template_has_no_field_that_weakens_the_pod_behind_the_operators_back(
    field: dict[str, Any],
) -> None:
    with pytest.raises(ManifestError, match="podTemplate"):
        _parse("TrainingRun", podTemplate=field)


def test_a_security_context_a_run_writes_is_merged_over_the_restricted_one() -> None:
    """Loosening it is the run's own, visible choice (PodSecurity admission judges it); what
    the run does not name stays restricted."""
    template = {"securityContext": {"runAsUser": 0}, "hostNetwork": True}
    for job in _jobs(podTemplate=template):
        pod = _pod(job)
        assert pod["securityContext"]["runAsUser"] == 0
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["hostNetwork"] is True
