"""How the real node's pods reach the stack's servers, which listen on 127.0.0.1 only: the
apiserver (in-cluster clients), MinIO and MLflow (the operator's runs).

A relay (tcp_relay.py, a process of the stack) accepts on the node bridge's address at each
server's port and relays to 127.0.0.1. Pods reach MinIO and MLflow at
http://<bridge address>:<port> (`pod_endpoints`, the operator's settings), and the
`default/kubernetes` Service gets an EndpointSlice naming the apiserver's: kube-proxy sends
`10.96.0.1:443` (the KUBERNETES_SERVICE_HOST/PORT the kubelet gives every pod) to the relay.
The apiserver's certificate names the Service IP and `kubernetes.default.svc` (certs.py), and
it validates the pods' ServiceAccount tokens (signed with the stack's admin key), so client
libraries' in-cluster configuration works as on any cluster. The apiserver runs with
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

NAME = "node-relay"
SERVICE = "kubernetes"
"""The Service in `default` that in-cluster clients dial (its port is named `https`)."""
MANAGED_BY = "tradewind.dev"
"""The EndpointSlice's `managed-by` label: not the EndpointSlice controller's."""


RELAYED = ("kube-apiserver", "minio", "mlflow")
"""The stack's servers the relay carries (those the stack runs)."""


def process(stack: DevStack, plan: NodePlan) -> ManagedProcess:
    """The relay on the bridge's address, at each relayed server's port."""
    relayed = [n for n in RELAYED if n != "mlflow" or stack.config.with_mlflow]
    ports = [int(stack.state["ports"][name]) for name in relayed]
    address = plan.gateway_ip
    return ManagedProcess(
        NAME,
        [
            sys.executable,
            "-m",
            "tradewind.devstack.tcp_relay",
            f"--listen={address}",
            *(f"--port={port}" for port in ports),
        ],
        stack.dir / "logs" / f"{NAME}.log",
        lambda: all(_accepts(address, port) for port in ports),
    )


def pod_endpoints(stack: DevStack, plan: NodePlan) -> dict[str, str]:
    """The operator's settings for pods on the real node: MinIO and MLflow at the bridge."""
    ports = stack.state["ports"]
    out = {"TRADEWIND_S3_ENDPOINT": f"http://{plan.gateway_ip}:{ports['minio']}"}
    if stack.config.with_mlflow:
        out["TRADEWIND_MLFLOW_TRACKING_URI"] = f"http://{plan.gateway_ip}:{ports['mlflow']}"
    return out


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
