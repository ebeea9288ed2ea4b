"""In-cluster clients on the real node: how its pods reach the apiserver, which listens on
127.0.0.1 only.

A relay (tcp_relay.py, a process of the stack) accepts on the node bridge's address at the
apiserver's port and relays to 127.0.0.1, and the `default/kubernetes` Service gets an
EndpointSlice naming that address. kube-proxy then sends `10.96.0.1:443` (the
KUBERNETES_SERVICE_HOST/PORT the kubelet gives every pod) to the relay. The apiserver's
certificate names the Service IP and `kubernetes.default.svc` (certs.py), and it validates the
pods' ServiceAccount tokens (signed with the stack's admin key), so client libraries'
in-cluster configuration works as on any cluster. The apiserver runs with
`--endpoint-reconciler-type=none`: nothing else writes that EndpointSlice.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from typing import TYPE_CHECKING, Any

from tradewind.devstack.node_config import NodePlan
from tradewind.devstack.processes import ManagedProcess, StackError

if TYPE_CHECKING:
    from tradewind.devstack.stack import DevStack

NAME = "apiserver-relay"
SERVICE = "kubernetes"
"""The Service in `default` that in-cluster clients dial (its port is named `https`)."""
MANAGED_BY = "tradewind.dev"
"""The EndpointSlice's `managed-by` label: not the EndpointSlice controller's."""


def process(stack: DevStack, plan: NodePlan) -> ManagedProcess:
    """The relay on the bridge's address, at the apiserver's port."""
    port = int(stack.state["ports"]["kube-apiserver"])
    address = plan.gateway_ip
    return ManagedProcess(
        NAME,
        [
            sys.executable,
            "-m",
            "tradewind.devstack.tcp_relay",
            f"--listen={address}",
            f"--port={port}",
        ],
        stack.dir / "logs" / f"{NAME}.log",
        lambda: _accepts(address, port),
    )


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def endpoint_slice(address: str, port: int) -> dict[str, Any]:
    """The `kubernetes` Service's endpoints: the relay."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }


def publish(stack: DevStack, plan: NodePlan) -> None:
    """Point the `kubernetes` Service at the relay."""
    port = int(stack.state["ports"]["kube-apiserver"])
    manifest = endpoint_slice(plan.gateway_ip, port)
    stack._kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def withdraw(stack: DevStack) -> None:
    """Remove the EndpointSlice, if the apiserver still answers (`down` stops it next)."""
    with contextlib.suppress(StackError):
        stack._kubectl(
            "delete", "endpointslice", "-n", "default", SERVICE, "--ignore-not-found",
            "--timeout=10s", "--request-timeout=10s",
        )  # fmt: skip
