"""Take a real node off the machine: its containers and their shims, the mounts under its
folder, the pods' network namespaces, its bridge, and the iptables rules of kube-proxy.

Everything is found by what makes it the node's own: processes by the containerd socket on
their command line (shims) or by being a shim's child (containers), mounts by their path,
network namespaces by their folder (containerd's state), the bridge by name. Also what a
node killed hard left behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tradewind.devstack import node_images
from tradewind.devstack.node_config import NodePlan
from tradewind.devstack.processes import StackError

CNI_CACHE = Path("/var/lib/cni/results")
CGROUPS = Path("/sys/fs/cgroup")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
"""The kubelet links every container's log there (a fixed path), to files under podLogsDir."""


def stop_containers(plan: NodePlan, containerd_running: bool) -> None:
    """Kill every container of the node: through containerd when it runs, then whatever
    its shims still hold (their children are the containers' first processes)."""
    if containerd_running:
        with contextlib.suppress(StackError, subprocess.TimeoutExpired):
            for task in _tasks(plan):
                node_images.ctr(plan.containerd_socket, "tasks", "kill", "-a", "-s", "KILL", task)
    deadline = time.monotonic() + 10
    while (children := _shim_children(plan)) and time.monotonic() < deadline:
        for pid in children:
            _kill(pid)
        time.sleep(0.2)


def _tasks(plan: NodePlan) -> list[str]:
    out = node_images.ctr(plan.containerd_socket, "tasks", "ls", "--quiet")
    return out.split()


def shims(plan: NodePlan) -> list[int]:
    """containerd-shim-runc-v2 processes of this node's containerd."""
    needle = str(plan.containerd_socket).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
            found.append(int(proc.name))
    return found


def _shim_children(plan: NodePlan) -> list[int]:
    parents = set(shims(plan))
    children = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in parents:
            children.append(int(proc.name))
    return children


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def remove_host_state(plan: NodePlan, kube_proxy: Path) -> list[str]:
    """After containerd stopped: shims, mounts, network namespaces, the bridge, iptables.
    Returns what it removed, counted."""
    removed = []
    if pids := shims(plan):
        for pid in pids:
            _kill(pid)
        removed.append(f"{len(pids)} shims")
    if n := _unmount_under(plan.dir):
        removed.append(f"{n} mounts")
    if n := _delete_pod_netns(plan):
        removed.append(f"{n} network namespaces")
    if _ip("link", "delete", plan.bridge).returncode == 0:
        removed.append(f"bridge {plan.bridge}")
    shutil.rmtree(plan.ipam_dir, ignore_errors=True)  # every address is free again
    _remove_cni_cache(plan)
    if n := _remove_cgroups(plan):
        removed.append(f"{n} cgroups")
    if n := _remove_log_links(plan.dir):
        removed.append(f"{n} links in {CONTAINER_LOG_LINKS}")
    if kube_proxy.is_file() and _remove_kube_proxy_rules(kube_proxy):
        removed.append("kube-proxy's iptables rules")
    return removed


def _remove_cgroups(plan: NodePlan) -> int:
    """The cgroups (v1: one per hierarchy) of containers killed without runc's delete:
    /sys/fs/cgroup/<controller>/k8s.io/<id>, for the ids the node's CRI plugin recorded."""
    cri = plan.containerd_dir / "root" / "io.containerd.grpc.v1.cri"
    ids = {p.name for kind in ("containers", "sandboxes") for p in (cri / kind).glob("*")}
    count = 0
    for group in CGROUPS.glob(f"*/{node_images.CRI_NAMESPACE}/*"):
        if group.name in ids and group.is_dir():
            with contextlib.suppress(OSError):  # still has processes: leave it
                group.rmdir()
                count += 1
    return count


def _remove_cni_cache(plan: NodePlan) -> None:
    """libcni's results of the node's pods: <network>-<container>-eth0, and containerd's
    loopback network's cni-loopback-<container>-lo of the same containers."""
    for cached in CNI_CACHE.glob(f"{plan.network_name}-*"):
        container = cached.name.removeprefix(f"{plan.network_name}-").rsplit("-", 1)[0]
        (CNI_CACHE / f"cni-loopback-{container}-lo").unlink(missing_ok=True)
        cached.unlink(missing_ok=True)


def _remove_log_links(folder: Path) -> int:
    root, count = str(folder.resolve()) + "/", 0
    for link in CONTAINER_LOG_LINKS.glob("*.log") if CONTAINER_LOG_LINKS.is_dir() else []:
        if link.is_symlink() and os.readlink(link).startswith(root):
            link.unlink()
            count += 1
    return count


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first."""
    root = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _unmount_under(folder: Path) -> int:
    count = 0
    for _ in range(5):  # kubelet's root dir is a bind mount of itself: mounts can stack
        points = mounts_under(folder)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", "-l", point], capture_output=True).returncode == 0:
                count += 1
    return count


def pod_netns(plan: NodePlan) -> list[Path]:
    """The pods' network namespaces (containerd names them cni-<uuid>, in its state folder)."""
    return sorted(plan.netns_dir.glob("cni-*")) if plan.netns_dir.is_dir() else []


def _delete_pod_netns(plan: NodePlan) -> int:
    """After _unmount_under: the namespaces are gone with their mounts, their files remain."""
    names = pod_netns(plan)
    for path in names:
        path.unlink(missing_ok=True)
    return len(names)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


def kube_chains() -> list[str]:
    """`command/table/chain` of every KUBE-* chain (kube-proxy's, and its KUBE-FIREWALL)."""
    found = []
    for command in IPTABLES:
        for table in TABLES:
            found += [
                f"{command}/{table}/{line.split()[1]}"
                for line in _rules(command, table)
                if line.startswith("-N KUBE-")
            ]
    return found


def _rules(command: str, table: str) -> list[str]:
    result = subprocess.run([command, "-t", table, "-S"], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


def _remove_kube_proxy_rules(kube_proxy: Path) -> bool:
    """`kube-proxy --cleanup`, then what it leaves on purpose (KUBE-FIREWALL, which it
    shares with kubelets that make it): the jumps to KUBE-* chains, then the chains."""
    if not kube_chains():
        return False
    subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60)
    for command in IPTABLES:
        for table in TABLES:
            rules = [shlex.split(rule) for rule in _rules(command, table)]
            for words in rules:
                if _jumps_to_kube_chain(words):
                    _iptables(command, table, "-D", *words[1:])
            for words in rules:
                if words[0] == "-N" and words[1].startswith("KUBE-"):
                    _iptables(command, table, "-F", words[1])
                    _iptables(command, table, "-X", words[1])
    return True


def _jumps_to_kube_chain(words: list[str]) -> bool:
    """An `-A CHAIN ... -j KUBE-...` rule of a chain not itself KUBE-*."""
    if words[0] != "-A" or words[1].startswith("KUBE-") or "-j" not in words:
        return False
    return words[words.index("-j") + 1].startswith("KUBE-")


def _iptables(command: str, table: str, *args: str) -> None:
    subprocess.run([command, "-t", table, *args], capture_output=True)
