"""The dev stack's real node (`tradewind dev up --real-node`): kubelet + containerd + runc +
CNI + CoreDNS + kube-proxy on this machine, in a stack of its own (a temporary folder).

Pods run to completion under PodSecurity `restricted` (non-root uid 10001, RuntimeDefault
seccomp, read-only root filesystem, no capabilities) and `kubectl logs` reads them; a pod finds
another by its headless-Service name (`<hostname>.<subdomain>`, as the torchrun rendezvous
does) and through a ClusterIP Service; `down` leaves no mount, network namespace or bridge.

Skipped only when the kubelet is not built (`hack/build-binaries.sh kubernetes-node
coredns`); anything else missing (root, Debian's containerd, runc, CNI plugins,
busybox-static) fails with what to install.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tradewind.devstack import DevStack, StackConfig, node_cleanup, node_images, real_node
from tradewind.devstack.node_config import NODE_LABEL
from tradewind.devstack.stack import cache_dir

pytestmark = pytest.mark.integration
NAMESPACE = "real-node-test"
UID = 10001
DEBIAN_BASE = "debian:bookworm-slim"
"""The Dockerfile's base, made from Debian's packages by hack/build-images.sh."""
ROOT = Path(__file__).resolve().parents[2]

if not (cache_dir() / "bin" / "current" / "kubelet").is_file():
    pytest.skip(
        "no kubelet in the binary cache: hack/build-binaries.sh kubernetes-node coredns",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(
        StackConfig(
            dev_dir=tmp_path_factory.mktemp("realnode"), nodes=0, with_mlflow=False, real_node=True
        )
    )
    try:
        stack.up(log=lambda _: None)
        yield stack
    finally:
        plan = real_node.load_plan(stack)
        stack.destroy()
        if plan is not None:  # nothing of the node is left on the machine
            assert node_cleanup.mounts_under(plan.dir) == []
            assert node_cleanup.pod_netns(plan) == []
            assert node_cleanup.shims(plan) == []
            assert node_cleanup.kube_chains() == []
            links = subprocess.run(["ip", "link", "show", plan.bridge], capture_output=True)
            assert links.returncode != 0, f"bridge {plan.bridge} is still there"


@pytest.fixture(scope="module")
def kube(node_stack: DevStack) -> Kubectl:
    kubectl = Kubectl(node_stack)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )
    return kubectl


def restricted_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod of the busybox test image that PodSecurity `restricted` admits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {NODE_LABEL: "true"},
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": node_images.busybox_image().ref,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            **spec,
        },
    }


def container_init_pid(pod: dict[str, Any]) -> int:
    """The host PID of the pod's first container's init process (PID 1 in its namespace):
    the process whose cgroup names the container's ID."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            in_container = container_id in (proc / "cgroup").read_text()
            status = (proc / "status").read_text()
        except OSError:
            continue
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
        if in_container and nspid and nspid.group(1).split()[-1] == "1":
            return int(proc.name)
    raise AssertionError(f"no process of container {container_id} on this host")


def wait_succeeded(kube: Kubectl, pod: str, timeout: int = 120, namespace: str = NAMESPACE) -> None:
    result = kube.run(
        "wait", "-n", namespace, "--for=jsonpath={.status.phase}=Succeeded", f"pod/{pod}",
        f"--timeout={timeout}s", check=False,
    )  # fmt: skip
    if result.returncode != 0:
        status = kube.get("-n", namespace, f"pod/{pod}").get("status", {})
        logs = kube.run("logs", "-n", namespace, pod, check=False)
        raise AssertionError(
            f"pod {pod} did not succeed: {json.dumps(status)[:2000]}\nlogs: {logs.stdout}"
        )


def test_restricted_pod_runs_and_logs(kube: Kubectl) -> None:
    kube.apply(restricted_pod("hello", "echo hello from $(hostname) as uid $(id -u)"))
    wait_succeeded(kube, "hello")
    logs = kube.run("logs", "-n", NAMESPACE, "hello").stdout
    assert logs.strip() == f"hello from hello as uid {UID}"
    pod = kube.get("-n", NAMESPACE, "pod/hello")
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (0, "Completed")


@pytest.fixture(scope="module")
def server(kube: Kubectl) -> str:
    """Pod `server` (hostname `server`, subdomain `peers`) serving /etc over http on 8080,
    behind the headless Service `peers` and the ClusterIP Service `web` (port 80)."""
    for name, port in (("peers", None), ("web", 80)):
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    **({"clusterIP": "None"} if port is None else {}),
                    "publishNotReadyAddresses": port is None,
                    "selector": {"app": "server"},
                    "ports": [{"port": port or 8080, "targetPort": 8080}],
                },
            }
        )
    pod = restricted_pod(
        "server", "exec httpd -f -p 8080 -h /etc", hostname="server", subdomain="peers"
    )
    pod["spec"]["restartPolicy"] = "Always"
    kube.apply(pod)
    kube.wait("-n", NAMESPACE, "--for=condition=Ready", "pod/server")
    return str(kube.get("-n", NAMESPACE, "pod/server")["status"]["podIP"])


# busybox's nslookup has its own resolver (no search path for dotted names); its wget, built
# static against glibc, crashes: addresses from nslookup, http by hand over nc.
HTTP_GET = r"printf 'GET /hostname HTTP/1.0\r\n\r\n' | nc -w 3"
FIRST_ADDRESS = "sed -n 's/^Address: //p' | head -n 1"  # the answers, not the server's line


def test_pods_find_each_other_by_headless_service_name(kube: Kubectl, server: str) -> None:
    """The pod's full headless-Service name resolves to its address, and it answers there;
    the ClusterIP Service in front of it answers too (kube-proxy)."""
    fqdn = f"server.peers.{NAMESPACE}.svc.cluster.local"
    client = (
        f"for i in $(seq 60); do ip=$(nslookup {fqdn} | {FIRST_ADDRESS}); "
        '[ -n "$ip" ] && break; sleep 1; done; echo "pod address $ip"; '
        f'{HTTP_GET} "$ip" 8080 | tail -n 1; '
        f"web=$(nslookup web | {FIRST_ADDRESS}); "
        f'for i in $(seq 30); do {HTTP_GET} "$web" 80 | tail -n 1 | grep . && break; sleep 1; done'
    )
    kube.apply(restricted_pod("client", client))
    wait_succeeded(kube, "client", timeout=180)
    logs = kube.run("logs", "-n", NAMESPACE, "client").stdout.splitlines()
    assert logs == [f"pod address {server}", "server", "server"], logs


def test_glibc_resolves_the_rendezvous_name_through_the_search_path(
    kube: Kubectl, node_stack: DevStack, server: str
) -> None:
    """`<hostname>.<subdomain>` as torchrun's rendezvous endpoint names rank 0, resolved by
    glibc (the trainer's resolver) in the Dockerfile's Debian base, copied from docker."""
    subprocess.run([str(ROOT / "hack" / "build-images.sh")], check=True, timeout=1800)
    plan = real_node.load_plan(node_stack)
    assert plan is not None
    node_images.import_from_docker(plan.containerd_socket, DEBIAN_BASE)
    pod = restricted_pod("glibc", "getent hosts server.peers && getent hosts web")
    pod["spec"]["containers"][0]["image"] = DEBIAN_BASE
    kube.apply(pod)
    wait_succeeded(kube, "glibc")
    logs = kube.run("logs", "-n", NAMESPACE, "glibc").stdout.split()
    assert logs[:2] == [server, f"server.peers.{NAMESPACE}.svc.cluster.local"], logs
    assert logs[3] == f"web.{NAMESPACE}.svc.cluster.local", logs


def test_status_lists_the_node(node_stack: DevStack) -> None:
    states = node_stack.status()
    assert {n: states[n] for n in real_node.PROCESSES} == dict.fromkeys(
        real_node.PROCESSES, "running"
    )
    plan = real_node.load_plan(node_stack)
    assert plan is not None and Path(plan.containerd_socket).is_socket()


def test_a_container_over_its_memory_limit_is_oomkilled_by_the_kubelet(kube: Kubectl) -> None:
    """The kernel kills it in its memory cgroup and the kubelet says so: exit 137, OOMKilled
    (what the operator reads to fail a run as OutOfMemory without a restart)."""
    pod = restricted_pod("hungry", "x=$(head -c 128m /dev/zero | tr '\\0' x); echo survived")
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "32Mi", "cpu": "500m"}}
    kube.apply(pod)
    kube.run(
        "wait", "-n", NAMESPACE, "pod/hungry", "--for=jsonpath={.status.phase}=Failed",
        "--timeout=120s",
    )  # fmt: skip
    status = kube.get("-n", NAMESPACE, "pod/hungry")["status"]["containerStatuses"][0]
    terminated = status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled"), terminated


IN_CLUSTER_CLIENT = """
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
config.load_incluster_config()
api = client.CoreV1Api()
print(api.api_client.configuration.host)
print(" ".join(p.metadata.name for p in api.list_namespaced_pod("{namespace}").items))
try:
    api.list_namespaced_pod("kube-system")
except ApiException as e:
    print(e.status)
"""


def test_a_pod_reaches_the_apiserver_with_its_service_account_token(
    kube: Kubectl, node_stack: DevStack
) -> None:
    """The operator image's Kubernetes client, configured in-cluster as the operator is:
    10.96.0.1:443 (the `kubernetes` Service) -> kube-proxy -> the relay on the bridge -> the
    apiserver on 127.0.0.1, whose certificate names the Service IP; the ServiceAccount's token
    authenticates the pod and RBAC decides (`view` in its namespace, nothing elsewhere)."""
    subprocess.run([str(ROOT / "hack" / "build-images.sh")], check=True, timeout=1800)
    image = "tradewind-operator:0.1.0"
    build = ["docker", "build", "--quiet", "--target", "operator", "-t", image, "."]
    subprocess.run(build, cwd=ROOT, check=True, timeout=1800, capture_output=True)
    plan = real_node.load_plan(node_stack)
    assert plan is not None
    node_images.import_from_docker(plan.containerd_socket, image)
    kube.run("create", "serviceaccount", "lister", "-n", NAMESPACE)
    kube.run(
        "create", "rolebinding", "lister-view", "-n", NAMESPACE, "--clusterrole=view",
        f"--serviceaccount={NAMESPACE}:lister",
    )  # fmt: skip
    pod = restricted_pod("in-cluster", "", serviceAccountName="lister")
    container = pod["spec"]["containers"][0]
    container["image"] = image
    container["command"] = ["python", "-c", IN_CLUSTER_CLIENT.format(namespace=NAMESPACE)]
    kube.apply(pod)
    wait_succeeded(kube, "in-cluster", timeout=180)
    logs = kube.run("logs", "-n", NAMESPACE, "in-cluster").stdout.splitlines()
    assert logs[0] == "https://10.96.0.1:443", logs
    assert "in-cluster" in logs[1].split(), logs
    assert logs[2] == "403", logs
