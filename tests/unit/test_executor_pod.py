"""The executor's kubelet logic without a cluster: `$(VAR)` expansion, environment from
values, fieldRefs, Secrets and ConfigMaps, volumes, the hosts file and the namespaces'
init script."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tradewind.devstack.executor_net import NetworkPlan
from tradewind.devstack.executor_pod import (
    ConfigError,
    Mount,
    Security,
    container_mounts,
    container_security,
    exit_code,
    expand,
    hosts_file,
    init_script,
    materialise_volumes,
    memory_volume_sizes,
    quantity_bytes,
    resolve_env,
    write_in_place,
)

INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "run-0-1-abcde",
            "namespace": "ns",
            "uid": "u-1",
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
            "labels": {"app": "x"},
        },
        "spec": {"nodeName": "executor-0", **spec},
    }


OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("secrets", "creds"): {"data": {"KEY": base64.b64encode(b"s3cr3t").decode()}},
    ("configmaps", "cfg"): {"data": {"run.yaml": "kind: TrainingRun\n", "MODE": "fast"}},
}


def _fetch(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    assert namespace == "ns"
    return OBJECTS.get((kind, name))


def test_expand_follows_kubernetes_rules() -> None:
    env = {"RANK": "1", "A": "x"}
    assert expand("--node-rank=$(RANK)", env) == "--node-rank=1"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(RANK) is escaped", env) == "$(RANK) is escaped"


def test_env_values_field_refs_secrets_and_configmaps() -> None:
    container = {
        "name": "trainer",
        "env": [
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
            {"name": "ARG", "value": "rank-$(RANK)"},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "K", "optional": True}},
            },
        ],
    }
    env = resolve_env(_pod(), container, "10.200.0.3", _fetch)
    assert env == {
        "RANK": "1",
        "POD": "run-0-1-abcde",
        "IP": "10.200.0.3",
        "SECRET": "s3cr3t",
        "MODE": "fast",
        "ARG": "rank-1",
    }


def test_a_missing_secret_key_is_a_config_error() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE"}}}],
    }
    with pytest.raises(ConfigError, match="NOPE"):
        resolve_env(_pod(), container, None, _fetch)


def test_volumes_are_materialised_and_mounted(tmp_path: Path) -> None:
    items = [{"key": "KEY", "path": "k"}]
    pod = _pod(
        volumes=[
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "creds", "secret": {"secretName": "creds", "items": items}},
        ]
    )
    volumes = materialise_volumes(pod, tmp_path, _fetch, lambda sa, src: "token")
    assert (tmp_path / "volumes" / "config" / "run.yaml").read_text() == "kind: TrainingRun\n"
    assert (tmp_path / "volumes" / "creds" / "k").read_text() == "s3cr3t"
    assert volumes["dshm"] is None
    mounts = container_mounts(
        {
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/tradewind", "readOnly": True},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ]
        },
        volumes,
    )
    script = init_script("run-0-1", mounts, tmp_path, "/")
    assert "hostname run-0-1" in script
    assert f"cd {tmp_path}\n" in script  # bind sources below are relative to the pod's folder
    assert "mount -c --bind -o ro volumes/config /etc/tradewind" in script
    assert "mount -t tmpfs -o mode=1777 tmpfs /dev/shm" in script
    assert "mount -c --bind etc-hosts /etc/hosts" in script
    assert "mount -c --bind var-tmp /var/tmp" in script and "remount" not in script
    assert script.rstrip().endswith('exec "$@"')


def test_unsupported_volumes_say_so(tmp_path: Path) -> None:
    pod = _pod(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}])
    with pytest.raises(ConfigError, match="persistentVolumeClaim"):
        materialise_volumes(pod, tmp_path, _fetch, lambda sa, src: "")


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write_in_place(path, hosts_file([("10.0.0.2", ["a.svc.ns.svc.cluster.local", "a.svc", "a"])]))
    inode = path.stat().st_ino
    write_in_place(path, hosts_file([("10.0.0.3", ["b"])]))
    assert path.stat().st_ino == inode  # a bind mount keeps seeing it
    assert "10.0.0.3\tb" in path.read_text() and "10.0.0.2" not in path.read_text()


def test_quantities_exit_codes_and_names() -> None:
    assert quantity_bytes("512Mi") == 512 * 2**20 and quantity_bytes("1G") == 10**9
    assert exit_code(-9) == 137 and exit_code(3) == 3
    plan = NetworkPlan("tw1234", "10.201.7.0/24")
    assert plan.bridge == "tw1234br" and plan.bridge_ip == "10.201.7.1"
    assert plan.address(2) == "10.201.7.2" and plan.netns(2) == "tw1234-p2"
    assert all(len(n) <= 15 for n in (plan.bridge, plan.veth(254), "tw1234c254"))


def test_pod_logs_finds_a_pod_by_name_or_unique_prefix(tmp_path: Path) -> None:
    from tradewind.demo import DemoError, pod_logs

    pods = tmp_path / "executor" / "pods" / "default"
    for folder in ("run-0-0-abcde-11111111", "run-0-1-fghij-22222222"):
        (pods / folder).mkdir(parents=True)
        (pods / folder / "trainer.log").write_text(folder)
    assert (
        pod_logs(tmp_path, "run-0-0-abcde", "default", "trainer")
        .read_text()
        .startswith("run-0-0-abcde")
    )
    assert pod_logs(tmp_path, "run-0-1", "default", "trainer").read_text().startswith("run-0-1")
    with pytest.raises(DemoError, match="several pods"):
        pod_logs(tmp_path, "run-0", "default", "trainer")
    with pytest.raises(DemoError, match="no pod default/other"):
        pod_logs(tmp_path, "other", "default", "trainer")
    with pytest.raises(DemoError, match="no container 'sidecar'"):
        pod_logs(tmp_path, "run-0-0-abcde", "default", "sidecar")


def _restricted_pod() -> dict[str, Any]:
    """A training pod as the operator builds it (restricted securityContext, emptyDirs)."""
    from tradewind.api import parse_resource
    from tradewind.operator.builders import build_job
    from tradewind.operator.settings import OperatorSettings

    run = parse_resource(
        {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun",
         "metadata": {"name": "r", "namespace": "ns"}, "spec": {}}
    )  # fmt: skip
    owner = {"apiVersion": "v", "kind": "TrainingRun", "name": "r", "uid": "u"}
    job = build_job(run, 0, "u", owner, OperatorSettings())  # type: ignore[arg-type]
    return {"metadata": {"name": "r-0-0", "namespace": "ns"}, **job["spec"]["template"]}


def test_a_restricted_pod_gets_a_read_only_root_and_a_sized_shm(tmp_path: Path) -> None:
    pod = _restricted_pod()
    (container,) = pod["spec"]["containers"]
    security = container_security(pod, container)
    assert security == Security(read_only_root=True, no_new_privs=True)
    sizes = memory_volume_sizes(pod)
    assert sizes == {"dshm": 2**30}
    volumes = {v["name"]: None if v["name"] == "dshm" else tmp_path / "volumes" / v["name"]
               for v in pod["spec"]["volumes"]}  # fmt: skip
    script = init_script("h", container_mounts(container, volumes, sizes), tmp_path, "/", security)
    lines = script.splitlines()
    assert f"mount -t tmpfs -o mode=1777,size={2**30} tmpfs /dev/shm" in lines
    assert "mount -c --bind volumes/tmp /tmp" in lines
    assert "mount -c --bind volumes/state /var/tmp/tradewind" in lines
    assert "mount -c --bind var-tmp /var/tmp" not in lines  # /var/tmp stays read-only
    assert lines[-3:] == [
        "mount -o remount,bind,ro /",
        "cd /",
        'exec setpriv --no-new-privs -- "$@"',
    ]


def test_run_as_non_root_needs_a_non_root_user() -> None:
    """As a kubelet: the executor's image runs as root, so runAsNonRoot needs runAsUser."""
    pod = _pod(securityContext={"runAsNonRoot": True})
    with pytest.raises(ConfigError, match="runAsNonRoot"):
        container_security(pod, {"name": "c"})
    assert container_security(pod, {"name": "c", "securityContext": {"runAsUser": 7}}) == Security()


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_the_init_script_mounts_over_the_pods_own_folder_and_keeps_the_root_read_only(
    tmp_path: Path,
) -> None:
    """Really run: an emptyDir on /tmp (a parent of the pod's folder here) hides neither the
    sources after it nor the config mounted inside it; the root is read-only, the emptyDirs
    and the sized tmpfs writable up to their limit."""
    pod_dir = tmp_path / "pod"
    for name in ("tmp", "state", "config"):
        (pod_dir / "volumes" / name).mkdir(parents=True)
    (pod_dir / "volumes" / "config" / "run.yaml").write_text("kind: TrainingRun\n")
    for name in ("etc-hosts", "resolv.conf"):
        (pod_dir / name).touch()
    state = f"/var/tmp/tradewind-test-{os.getpid()}"
    mounts = [
        Mount(pod_dir / "volumes" / "config", "/tmp/config", read_only=True),
        Mount(pod_dir / "volumes" / "tmp", "/tmp"),
        Mount(pod_dir / "volumes" / "state", state),
        Mount(None, "/tmp/shm", size=2**20),
    ]
    image = tmp_path / "image"  # a checkout under /tmp, where an emptyDir goes
    image.mkdir()
    (image / "python").write_text("the interpreter\n")
    script = pod_dir / "init.sh"
    security = Security(read_only_root=True)
    script.write_text(init_script("h", mounts, pod_dir, "/", security, image=[image]))
    check = (
        f"cat {image}/python && cat /tmp/config/run.yaml && touch /tmp/a {state}/b"
        " && ! touch /usr/tradewind-test 2>/dev/null && ! touch /tmp/config/x 2>/dev/null"
        " && ! dd if=/dev/zero of=/tmp/shm/f bs=1M count=2 2>/dev/null && echo ok"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tradewind.devstack.executor_shim", str(script),
             "sh", "-c", check],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(state)  # the mount point it made on the host
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "the interpreter\nkind: TrainingRun\nok\n"
    assert (pod_dir / "volumes" / "tmp" / "a").exists()
    assert (pod_dir / "volumes" / "state" / "b").exists()
