"""The executor's pod network: a Linux bridge with the host side's address, one network
namespace per pod with a veth on the bridge and an address from the pod CIDR, and TCP
forwarders (tcp_relay.py) that make the stack's MinIO and MLflow (which listen on 127.0.0.1)
reachable from every pod at the bridge address. Everything is named after one prefix, so
`cleanup` removes it all, also what an executor that was killed left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tradewind.executor.net")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message holds its stderr."""


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class NetworkPlan:
    """Names and addresses of one executor's pod network."""

    prefix: str
    """2 + 4 characters that every netns, veth and bridge of this executor starts with."""
    cidr: str
    """The pod CIDR, a /24; .1 is the bridge (host side), pods get .2 and up."""

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def bridge_ip(self) -> str:
        return str(self.network.network_address + 1)

    def netns(self, host: int) -> str:
        return f"{self.prefix}-p{host}"

    def veth(self, host: int) -> str:
        return f"{self.prefix}v{host}"

    def address(self, host: int) -> str:
        return str(self.network.network_address + host)

    def to_json(self) -> dict[str, str]:
        return {"prefix": self.prefix, "cidr": self.cidr, "bridgeIP": self.bridge_ip}


def plan_network(key: str) -> NetworkPlan:
    """A prefix and a free /24 in 10.200.0.0/13, both derived from `key` (the stack folder),
    skipping subnets that an interface or route of this machine already uses."""
    digest = hashlib.sha256(key.encode()).digest()
    prefix = "tw" + digest[:2].hex()
    used = _used_networks()
    start = int.from_bytes(digest[2:4], "big")
    for i in range(2048):
        n = (start + i) % 2048
        candidate = ipaddress.IPv4Network(f"10.{200 + n // 256}.{n % 256}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return NetworkPlan(prefix, str(candidate))
    raise NetworkError("no free /24 in 10.200.0.0/13 for the pod network")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    for args in (("-j", "-4", "route", "show", "table", "all"), ("-j", "-4", "addr")):
        try:
            entries = json.loads(ip(*args) or "[]")
        except (NetworkError, ValueError, FileNotFoundError):
            continue
        for e in entries:
            for dst in [e.get("dst")] + [
                f"{a['local']}/{a['prefixlen']}" for a in e.get("addr_info", [])
            ]:
                if dst and dst != "default":
                    with contextlib.suppress(ValueError):
                        out.append(ipaddress.IPv4Network(dst, strict=False))
    return out


def create_bridge(plan: NetworkPlan) -> None:
    ip("link", "add", plan.bridge, "type", "bridge")
    ip("addr", "add", f"{plan.bridge_ip}/{plan.network.prefixlen}", "dev", plan.bridge)
    ip("link", "set", plan.bridge, "up")


def create_pod_network(plan: NetworkPlan, host: int) -> str:
    """A netns with eth0 (veth on the bridge) at the pod's address; returns the address."""
    ns, veth, peer = plan.netns(host), plan.veth(host), f"{plan.prefix}c{host}"
    addr = plan.address(host)
    ip("netns", "add", ns)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("-n", ns, "link", "set", peer, "name", "eth0")
        ip("-n", ns, "addr", "add", f"{addr}/{plan.network.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", plan.bridge_ip)
        ip("link", "set", veth, "master", plan.bridge, "up")
    except NetworkError:
        delete_pod_network(plan, host)
        raise
    return addr


def delete_pod_network(plan: NetworkPlan, host: int) -> None:
    """Kill what still runs in the pod's netns, then delete it (and with it the veth pair)."""
    ns = plan.netns(host)
    _kill_netns_processes(ns)
    ip("netns", "delete", ns, check=False)
    ip("link", "delete", plan.veth(host), check=False)


def _kill_netns_processes(ns: str) -> None:
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def leftovers(prefix: str) -> list[str]:
    """Network namespaces and links of this prefix that exist now."""
    names = [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line]
    links = json.loads(ip("-j", "link", "show", check=False) or "[]")
    names += [link["ifname"] for link in links]
    return sorted(n for n in names if n.startswith(prefix))


def cleanup(prefix: str) -> None:
    """Remove every netns, veth and bridge of this prefix (killing processes still in them)."""
    for name in leftovers(prefix):
        if Path(f"/run/netns/{name}").exists():
            _kill_netns_processes(name)
            ip("netns", "delete", name, check=False)
    for name in leftovers(prefix):
        ip("link", "delete", name, check=False)
