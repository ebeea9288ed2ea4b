"""The real node's configuration files, as pure functions of one plan: containerd's config and
registry hosts, the CNI network, the KubeletConfiguration, the KubeProxyConfiguration and
CoreDNS's Corefile. Nothing here touches the machine (see real_node.py for that)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from pydantic import BaseModel, Field

CLUSTER_DOMAIN = "cluster.local"
NODE_LABEL = "tradewind.dev/real-node"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"


class NodePlan(BaseModel):
    """Names, addresses, ports and folders of one real node; kept in the stack's state."""

    node_name: str = Field(description="The Node's name; resolves to 127.0.0.1 on this host.")
    bridge: str = Field(description="The CNI bridge (host side of the pod network).")
    pod_cidr: str = Field(description="The pods' /24; .1 is the bridge and the DNS server.")
    dir: Path = Field(description="Everything the node writes: <dev-dir>/node.")
    kubelet_port: int
    kubelet_healthz_port: int
    kube_proxy_healthz_port: int
    kube_proxy_metrics_port: int
    coredns_health_port: int
    coredns_ready_port: int
    sandbox_image: str = Field(description="The pod sandbox image, imported from pause.")
    registries: list[str] = Field(
        default_factory=list, description="host:port of local registries served over http."
    )

    @property
    def gateway_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)

    @property
    def network_name(self) -> str:
        """The CNI network's name (libcni caches results under it, machine-wide)."""
        return f"tradewind-{self.bridge}"

    @property
    def containerd_dir(self) -> Path:
        return self.dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.dir / "cni" / "ipam"

    @property
    def netns_dir(self) -> Path:
        """Where containerd mounts the pods' network namespaces (netns_mounts_under_state_dir)."""
        return self.containerd_dir / "state" / "io.containerd.grpc.v1.cri" / "netns"

    @property
    def registry_hosts_dir(self) -> Path:
        return self.containerd_dir / "certs.d"


def containerd_config(plan: NodePlan) -> str:
    """containerd 1.6 (config version 2): its own root, state and socket, the CRI plugin on
    runc with cgroupfs, CNI from Debian's plugins, registries from certs.d."""
    d = plan.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{plan.containerd_socket}"

[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{plan.sandbox_image}"
  # Root here lacks CAP_SYS_RESOURCE: lowering a process's oom_score_adj fails, and runc
  # then dies with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces under the node's state folder, not in /run/netns with others'.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{plan.cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{plan.registry_hosts_dir}"
"""


def registry_hosts(address: str) -> str:
    """certs.d/<host:port>/hosts.toml: a local registry over plain http (credentials come from
    the pods' imagePullSecrets, as on any cluster)."""
    return f"""server = "http://{address}"

[host."http://{address}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"""


def cni_network(plan: NodePlan) -> str:
    """A bridge with host-local addresses and portmap for hostPorts; no masquerading: pods
    talk to each other and to the host (the gateway), and kube-proxy NATs Service traffic."""
    network = {
        "cniVersion": "1.0.0",
        "name": plan.network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": plan.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": plan.pod_cidr, "gateway": plan.gateway_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(plan.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(network, indent=2)


def kubelet_config(plan: NodePlan, ca_file: Path) -> str:
    """KubeletConfiguration for a host with cgroup v1 (hybrid), swap, and no
    CAP_SYS_RESOURCE: no QoS cgroups, no node allocatable enforcement, no evictions or image
    garbage collection (imported images cannot be pulled again)."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The apiserver reaches the kubelet by the node's Hostname address (the node name,
        # which resolves to 127.0.0.1) and, having no client certificate for kubelets,
        # anonymously: so the kubelet listens on loopback only.
        "address": "127.0.0.1",
        "port": plan.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": plan.kubelet_healthz_port,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{plan.containerd_socket}",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "clusterDNS": [plan.gateway_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(plan.dir / "pod-logs"),
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 110,
        "registerNode": True,
        "nodeStatusReportFrequency": "10s",
    }
    return json.dumps(config, indent=2)  # JSON is YAML


def kube_proxy_config(plan: NodePlan, kubeconfig: Path) -> str:
    """KubeProxyConfiguration, iptables mode: NodePorts on the gateway only (no
    route_localnet), conntrack sysctls left as they are."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": plan.node_name,
        "clusterCIDR": plan.pod_cidr,
        "healthzBindAddress": f"127.0.0.1:{plan.kube_proxy_healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{plan.kube_proxy_metrics_port}",
        "nodePortAddresses": [f"{plan.gateway_ip}/32"],
        "iptables": {"localhostNodePorts": False},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    return json.dumps(config, indent=2)


def corefile(plan: NodePlan, kubeconfig: Path, context: str) -> str:
    """Cluster DNS on the gateway address: Service, headless-Service pod (`<hostname>.
    <subdomain>.<ns>.svc`) and pod names from the apiserver; the rest from the host's
    resolvers."""
    return f""".:53 {{
    bind {plan.gateway_ip}
    errors
    health 127.0.0.1:{plan.coredns_health_port}
    ready 127.0.0.1:{plan.coredns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"""
