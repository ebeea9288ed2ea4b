from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tradewind.devstack import DevStack, StackConfig, StackError
from tradewind.devstack.certs import write_certificates
from tradewind.devstack.kwok import FAIL_LABEL, HOLD_LABEL, STAGES, fake_node, render_stages
from tradewind.devstack.processes import ManagedProcess, free_port, start


def _fake_stage_dir(root: Path) -> Path:
    for rel in STAGES:
        name = Path(rel).stem
        stage = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": name},
            "spec": {"selector": {"matchExpressions": []}, "delay": {"durationMilliseconds": 9}},
        }
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(yaml.safe_dump(stage))
    return root


def test_pod_complete_skips_held_and_failing_pods(tmp_path: Path) -> None:
    stages = {
        s["metadata"]["name"]: s
        for s in yaml.safe_load_all(render_stages(_fake_stage_dir(tmp_path)))
    }
    assert set(stages) == {Path(r).stem for r in STAGES} | {"pod-start"}
    keys = [e["key"] for e in stages["pod-complete"]["spec"]["selector"]["matchExpressions"]]
    assert (
        f'.metadata.labels["{HOLD_LABEL}"]' in keys and f'.metadata.labels["{FAIL_LABEL}"]' in keys
    )
    assert stages["pod-complete"]["spec"]["delay"]["durationMilliseconds"] == 1000


def test_pod_start_takes_a_bound_pod_to_running_and_ready_in_one_patch(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(render_stages(_fake_stage_dir(tmp_path))))
    assert docs[0]["metadata"]["name"] == "pod-start"
    status = docs[0]["spec"]["next"]["statusTemplate"]
    assert "phase: Running" in status and "podIP:" in status and "type: Ready}" in status
    assert "event" not in docs[0]["spec"]["next"]


def test_missing_stage_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"hack/build-binaries\.sh kwok"):
        render_stages(tmp_path)


def test_fake_node_has_gpu_capacity_and_pool_label() -> None:
    node = fake_node("gpu-node-0", gpus=8, pool="h100")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"]["tradewind.dev/gpu-pool"] == "h100"
    assert "spec" in node and not node["spec"].get("taints")


def test_admin_certificate_is_a_master_with_loopback_sans(tmp_path: Path) -> None:
    write_certificates(tmp_path)
    cert = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "system:masters"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.96.0.1",
    }
    before = (tmp_path / "admin.crt").read_bytes()
    write_certificates(tmp_path)  # idempotent: kept, not regenerated
    assert (tmp_path / "admin.crt").read_bytes() == before


def test_status_of_a_stack_never_started(tmp_path: Path) -> None:
    stack = DevStack(StackConfig(dev_dir=tmp_path / "none"))
    assert set(stack.status().values()) == {"stopped"}


def test_missing_binaries_name_the_build_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEWIND_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(StackError, match=r"hack/build-binaries\.sh"):
        DevStack(StackConfig(dev_dir=tmp_path / "dev")).up(log=lambda _: None)


def test_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = ManagedProcess(
            "sleep", ["/bin/sleep", "5"], tmp_path / "log", lambda: True, ports=[port]
        )
        with pytest.raises(StackError, match=f"port 127\\.0\\.0\\.1:{port} is already in use"):
            start(proc)


def test_free_ports_are_never_handed_out_twice() -> None:
    # The kernel offers a just-closed probe port again: 1000 picks repeat some ~35 times.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_start_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "false",
        ["/bin/sh", "-c", "echo broken config; exit 3"],
        tmp_path / "x.log",
        lambda: False,
        ports=[free_port()],
    )
    with pytest.raises(StackError, match=r"exited with code 3(.|\n)*broken config"):
        start(proc)


def test_go_profiling_is_served_only_when_asked(tmp_path: Path) -> None:
    from tradewind.devstack.components import build_processes

    def profiling_flags(**config: Any) -> dict[str, str]:
        stack = DevStack(StackConfig(dev_dir=tmp_path, **config))
        stack._assign_ports()
        write_certificates(tmp_path / "pki")
        return {
            p.name: a for p in build_processes(stack) for a in p.argv if a.startswith("--profiling")
        }

    control_plane = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    assert profiling_flags() == dict.fromkeys(control_plane, "--profiling=false")
    assert profiling_flags(profiling=True) == dict.fromkeys(control_plane, "--profiling=true")
