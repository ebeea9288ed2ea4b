"""A real node in the dev stack (`tradewind dev up --real-node`): kubelet (the control plane's
version) on Debian's containerd 1.6 (its own instance: config, root, state and socket under
<dev-dir>/node) and runc, Debian's CNI plugins (a bridge of its own, host-local addresses),
CoreDNS as a host process on the bridge's address (the pods' cluster DNS: headless-Service pod
names resolve, as the torchrun rendezvous needs), kube-proxy in iptables mode (ClusterIP
Services), and a relay that makes the `kubernetes` Service reach the apiserver (in-cluster
clients work: node_relay.py). Pods run from images that containerd holds: the sandbox
image is made here from Kubernetes' own `pause` (hack/build-binaries.sh kubernetes-node),
others come from a local registry (http, credentials from imagePullSecrets) or are imported
(node_images.py).

Needs root, and Debian's containerd, runc, containernetworking-plugins (and busybox-static
for the test image). `down` stops it all and removes what it made on the machine: container
processes and shims, mounts under <dev-dir>/node, pod network namespaces, the bridge, and
kube-proxy's iptables rules. See docs/real-node.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tradewind.devstack import (
    node_cleanup,
    node_config,
    node_images,
    node_relay,
    node_storage,
)
from tradewind.devstack.node_config import NodePlan
from tradewind.devstack.processes import (
    ManagedProcess,
    StackError,
    free_port,
    http_ok,
    pid_alive,
    stop,
)

if TYPE_CHECKING:
    from tradewind.devstack.stack import DevStack

NAME = "real-node"
"""Its key in the stack's state (the NodePlan)."""
PROCESSES = ("containerd", node_relay.NAME, "coredns", "kubelet", "kube-proxy")
BINARIES = ("kubelet", "kube-proxy", "pause", "coredns")
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/cni/host-local": "containernetworking-plugins",
    "/usr/lib/cni/loopback": "containernetworking-plugins",
    "/usr/lib/cni/portmap": "containernetworking-plugins",
}
"""What the node needs from Debian: command or file -> the package that brings it."""
POD_NETWORKS = ipaddress.IPv4Network("10.208.0.0/13")
"""Where the pod /24 is taken from."""


# --- plan --------------------------------------------------------------------------------


def plan(stack: DevStack, registries: list[str]) -> NodePlan:
    """The node's plan, kept in the stack's state: made once (names, addresses, ports), its
    registries as this `up` names them (containerd reads certs.d at every pull)."""
    registries = sorted({*registries, *_stack_registry(stack)})
    current = load_plan(stack)
    if current is None:
        current = _new_plan(stack, registries)
    elif registries:
        current = current.model_copy(update={"registries": registries})
    stack.state[NAME] = json.loads(current.model_dump_json())
    return current


def _stack_registry(stack: DevStack) -> list[str]:
    """The address of the stack's own registry (registry.py keeps it in <dev-dir>/registry)."""
    from tradewind.devstack import registry

    state = stack.dir / registry.NAME / registry.STATE_FILE
    if not state.is_file():
        return []
    return [registry.Registry.model_validate_json(state.read_text()).address]


def _new_plan(stack: DevStack, registries: list[str]) -> NodePlan:
    """Names, addresses and ports of the node, derived from the stack folder."""
    key = hashlib.sha256(str(stack.dir.resolve()).encode()).digest()
    bridge = "twn" + key[:2].hex()
    return NodePlan(
        node_name=_node_name(),
        bridge=bridge,
        pod_cidr=_existing_or_free_cidr(bridge, int.from_bytes(key[2:4], "big")),
        dir=stack.dir.resolve() / "node",
        kubelet_port=free_port(),
        kubelet_healthz_port=free_port(),
        kube_proxy_healthz_port=free_port(),
        kube_proxy_metrics_port=free_port(),
        coredns_health_port=free_port(),
        coredns_ready_port=free_port(),
        sandbox_image="",  # set by prepare(): the pause binary's version
        registries=registries,
    )


def load_plan(stack: DevStack) -> NodePlan | None:
    raw = stack.state.get(NAME)
    return NodePlan.model_validate(raw) if raw else None


def _node_name() -> str:
    """The machine's hostname when it resolves to loopback (the apiserver dials a kubelet by
    its node name first, and this kubelet listens on 127.0.0.1), else `localhost`."""
    name = socket.gethostname().lower()
    try:
        resolves_local = ipaddress.ip_address(socket.gethostbyname(name)).is_loopback
    except (OSError, ValueError):
        resolves_local = False
    valid = name.replace("-", "").replace(".", "").isalnum()  # a DNS-1123 subdomain
    return name if resolves_local and valid else "localhost"


def _existing_or_free_cidr(bridge: str, start: int) -> str:
    used = _used_networks()
    for net, dev in used:
        if dev == bridge:
            return str(net)
    size = POD_NETWORKS.num_addresses // 256
    base = int(POD_NETWORKS.network_address)
    for i in range(size):
        candidate = ipaddress.IPv4Network((base + ((start + i) % size) * 256, 24))
        if not any(candidate.overlaps(n) for n, _ in used):
            return str(candidate)
    raise StackError(f"real node: no free /24 in {POD_NETWORKS} for the pod network")


def _used_networks() -> list[tuple[ipaddress.IPv4Network, str]]:
    """(network, device) of every IPv4 route and address of this machine."""
    out: list[tuple[ipaddress.IPv4Network, str]] = []
    for args in (("route", "show", "table", "all"), ("addr",)):
        result = subprocess.run(["ip", "-j", "-4", *args], capture_output=True, text=True)
        for e in json.loads(result.stdout or "[]"):
            dsts = [e.get("dst")] + [
                f"{a['local']}/{a['prefixlen']}" for a in e.get("addr_info", [])
            ]
            for dst in dsts:
                if dst and dst != "default":
                    try:
                        net = ipaddress.IPv4Network(dst, strict=False)
                    except ValueError:
                        continue
                    out.append((net, e.get("dev") or e.get("ifname") or ""))
    return out


# --- start -------------------------------------------------------------------------------


def check_host(stack: DevStack) -> None:
    """Fail with one line that says what to install, before anything starts."""
    if os.geteuid() != 0:
        raise StackError("--real-node needs root (containerd, network namespaces, mounts)")
    missing_packages = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not _have(tool)})
    if missing_packages:
        raise StackError(
            f"real node: missing Debian packages: apt-get install {' '.join(missing_packages)}"
        )
    missing = [b for b in BINARIES if not (stack.bin / b).is_file()]
    if missing:
        raise StackError(
            f"real node: missing binaries in {stack.bin}: {', '.join(missing)}; build them "
            "with hack/build-binaries.sh kubernetes-node coredns (cached by version)"
        )


def _have(tool: str) -> bool:
    return Path(tool).is_file() if tool.startswith("/") else shutil.which(tool) is not None


def prepare(stack: DevStack) -> None:
    """Before the node's processes start: folders, every config file, and the bridge (CoreDNS
    binds its address before the first pod exists; the CNI plugin then finds it ready)."""
    plan = load_plan(stack)
    assert plan is not None
    pause_version = (stack.bin / "pause").resolve().parent / "pause.version"
    tag = pause_version.read_text().strip() if pause_version.is_file() else "local"
    plan = plan.model_copy(update={"sandbox_image": f"tradewind.local/pause:{tag}"})
    stack.state[NAME] = json.loads(plan.model_dump_json())
    for d in (plan.containerd_dir, plan.kubelet_dir, plan.cni_conf_dir, plan.ipam_dir):
        d.mkdir(parents=True, exist_ok=True)
    _write(plan.containerd_dir / "config.toml", node_config.containerd_config(plan))
    shutil.rmtree(plan.registry_hosts_dir, ignore_errors=True)
    for address in plan.registries:
        hosts = plan.registry_hosts_dir / address / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        _write(hosts, node_config.registry_hosts(address))
    _write(plan.cni_conf_dir / "10-tradewind.conflist", node_config.cni_network(plan))
    ca = stack.dir.resolve() / "pki" / "ca.crt"
    kubeconfig = stack.kubeconfig.resolve()
    _write(plan.dir / "kubelet-config.yaml", node_config.kubelet_config(plan, ca))
    _write(plan.dir / "kube-proxy-config.yaml", node_config.kube_proxy_config(plan, kubeconfig))
    _write(plan.dir / "Corefile", node_config.corefile(plan, kubeconfig, "tradewind-dev"))
    _ensure_bridge(plan)


def _write(path: Path, text: str) -> None:
    """Write unless unchanged: kube-proxy exits when its config file is written to."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _ensure_bridge(plan: NodePlan) -> None:
    links = json.loads(_ip("-j", "link", "show").stdout or "[]")
    if not any(link["ifname"] == plan.bridge for link in links):
        _ip("link", "add", plan.bridge, "type", "bridge", check=True)
    prefix = ipaddress.IPv4Network(plan.pod_cidr).prefixlen
    _ip("addr", "replace", f"{plan.gateway_ip}/{prefix}", "dev", plan.bridge, check=True)
    _ip("link", "set", plan.bridge, "up", check=True)


def _ip(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise StackError(f"real node: ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def after_start(stack: DevStack, name: str, log: Callable[[str], None]) -> None:
    """containerd up: import the sandbox (and test) images; the relay up: point the
    `kubernetes` Service at it; kubelet up: wait for the Node."""
    plan = load_plan(stack)
    assert plan is not None
    if name == "containerd":
        images = [node_images.pause_image(stack.bin / "pause", plan.sandbox_image.split(":")[-1])]
        if node_images.BUSYBOX.is_file():
            images.append(node_images.busybox_image())
        for image in images:
            if node_images.import_image(plan.containerd_socket, image, plan.dir):
                log(f"containerd: imported {image.ref}")
    if name == node_relay.NAME:
        node_relay.publish(stack, plan)
        log(f"kubernetes Service: endpoint {plan.gateway_ip} (relay to the apiserver)")
    if name == "kubelet":
        _wait_node_ready(stack, plan.node_name)
        log(f"node {plan.node_name}: Ready (pods on {plan.pod_cidr}, DNS {plan.gateway_ip})")
        stack._kubectl("apply", "-f", "-", stdin=node_storage.prepare(plan))
        log(f"storage: default StorageClass {node_storage.CLASS}, {node_storage.VOLUMES} volumes")


def _wait_node_ready(stack: DevStack, name: str, timeout: float = 120) -> None:
    """`kubectl wait` refuses a Node not yet there: the kubelet registers it just after its
    health endpoint answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack._kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=5s")
            return
        except StackError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def processes(stack: DevStack) -> list[ManagedProcess]:
    plan = load_plan(stack)
    assert plan is not None
    b, logs, d = stack.bin, stack.dir / "logs", plan.dir
    socket_path = plan.containerd_socket
    return [
        ManagedProcess(
            "containerd",
            [
                shutil.which("containerd") or "/usr/bin/containerd",
                f"--config={plan.containerd_dir / 'config.toml'}",
            ],
            logs / "containerd.log",
            lambda: _socket_answers(socket_path),
        ),
        node_relay.process(stack, plan),
        ManagedProcess(
            "coredns",
            [str(b / "coredns"), "-conf", str(d / "Corefile")],
            logs / "coredns.log",
            lambda: http_ok(f"http://127.0.0.1:{plan.coredns_ready_port}/ready"),
            ports=[plan.coredns_health_port, plan.coredns_ready_port],
        ),
        ManagedProcess(
            "kubelet",
            [
                str(b / "kubelet"),
                f"--config={d / 'kubelet-config.yaml'}",
                f"--kubeconfig={stack.kubeconfig.resolve()}",
                f"--root-dir={plan.kubelet_dir}",
                f"--cert-dir={plan.kubelet_dir / 'pki'}",  # not relative to --root-dir
                f"--hostname-override={plan.node_name}",
                f"--node-ip={plan.gateway_ip}",
                f"--node-labels={node_config.NODE_LABEL}=true",
            ],
            logs / "kubelet.log",
            lambda: http_ok(f"http://127.0.0.1:{plan.kubelet_healthz_port}/healthz"),
            ports=[plan.kubelet_port, plan.kubelet_healthz_port],
            ready_timeout=120,
        ),
        ManagedProcess(
            "kube-proxy",
            [str(b / "kube-proxy"), f"--config={d / 'kube-proxy-config.yaml'}"],
            logs / "kube-proxy.log",
            lambda: http_ok(f"http://127.0.0.1:{plan.kube_proxy_healthz_port}/healthz"),
            ports=[plan.kube_proxy_healthz_port, plan.kube_proxy_metrics_port],
        ),
    ]


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


# --- stop --------------------------------------------------------------------------------


def down(stack: DevStack, log: Callable[[str], None]) -> None:
    """Stop the node's processes, its containers, and remove what it made on the machine;
    the plan (addresses, ports) and containerd's images stay for the next `up`."""
    pids = stack.state.get("pids", {})
    plan = load_plan(stack)
    if pid_alive(pids.get(node_relay.NAME)):
        node_relay.withdraw(stack)
    for name in ("kube-proxy", "kubelet", "coredns", node_relay.NAME):
        if pid_alive(pids.get(name)):
            stop(pids[name])
            log(f"{name}: stopped")
        pids.pop(name, None)
    if plan is None:
        return
    containerd_running = pid_alive(pids.get("containerd"))
    node_cleanup.stop_containers(plan, containerd_running)
    if containerd_running:
        stop(pids.pop("containerd"))
        log("containerd: stopped")
    left = node_cleanup.remove_host_state(plan, stack.bin / "kube-proxy")
    log(f"real node: cleaned up ({', '.join(left) or 'nothing was left'})")
