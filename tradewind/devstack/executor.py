"""A local pod executor: the dev stack's one node whose pods really run (test and demo
infrastructure, not product code).

It registers a Node of its own (a Lease heartbeat, capacity including `nvidia.com/gpu`, the
label `tradewind.dev/executor=true`; kwok manages only nodes labelled
`tradewind.dev/fake-node`), and for every pod bound to it does what a kubelet does: a network
namespace with its own address on a bridge, a hosts file in which pod hostnames and
headless-Service names resolve as cluster DNS would, volumes (ConfigMap, Secret, emptyDir,
projected, downwardAPI, hostPath), the environment (values, fieldRefs, Secret and ConfigMap
keys), the container's command in namespaces of its own (see executor_pod) with a read-only
root filesystem where its securityContext asks for one, the pod's status
(phase, IP, container states, exit codes, `OOMKilled`, restarts) through the status API, and
on deletion SIGTERM, the grace period, SIGKILL, then the final delete. Logs go to
`<state-dir>/pods/<namespace>/<pod>-<uid>/<container>.log` (`tradewind logs POD`).

MinIO and MLflow listen on 127.0.0.1; the executor relays the ports given with --forward from
the bridge's address, so pods (and the operator) reach them at http://<bridge-ip>:<port>.

Run by `tradewind dev up --executor`: python -m tradewind.devstack.executor --help
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import logging
import os
import shutil
import signal
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tradewind.devstack import executor_net as net
from tradewind.devstack import executor_pod as runtime
from tradewind.devstack.tcp_relay import Forwarder

if TYPE_CHECKING:
    from tradewind.devstack.processes import ManagedProcess
    from tradewind.devstack.stack import DevStack

log = logging.getLogger("tradewind.executor")
Manifest = dict[str, Any]

EXECUTOR_LABEL = "tradewind.dev/executor"
POLL_SECONDS = 0.5
LEASE_SECONDS = 40
CLUSTER_DOMAIN = "cluster.local"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube:
    """A minimal JSON client of the apiserver, from a kubeconfig with client certificates."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(
            c["context"] for c in config["contexts"] if c["name"] == config["current-context"]
        )
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.tls.load_cert_chain(user["client-certificate"], user["client-key"])
        self.lock = threading.Lock()
        self.conn: http.client.HTTPSConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Manifest | None:
        """The response object; None for 404."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        with self.lock:
            for attempt in (0, 1):
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(
                        self.host, self.port, context=self.tls, timeout=30
                    )
                try:
                    self.conn.request(method, path, body=data, headers=headers)
                    resp = self.conn.getresponse()
                    payload = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    self.conn.close()
                    self.conn = None
                    if attempt:
                        raise
        if resp.status == 404:
            return None
        if resp.status >= 300:
            raise ApiError(resp.status, payload.decode(errors="replace")[:500])
        return dict(json.loads(payload)) if payload else {}

    def get(self, path: str) -> Manifest | None:
        return self.request("GET", path)

    def merge_patch(self, path: str, body: Manifest) -> Manifest | None:
        return self.request("PATCH", path, body, "application/merge-patch+json")


@dataclass
class ContainerState:
    spec: Manifest
    running: runtime.Container | None = None
    terminated: Manifest | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    restarts: int = 0
    last_state: Manifest = field(default_factory=dict)


@dataclass
class PodRuntime:
    """What the executor keeps of one pod it runs."""

    uid: str
    namespace: str
    name: str
    dir: Path
    pod: Manifest
    host: int | None = None
    ip: str | None = None
    started: str | None = None
    containers: list[ContainerState] = field(default_factory=list)
    kill_deadline: float | None = None
    finished: bool = False
    """Every container terminated for good: nothing more runs until the pod is deleted."""
    reported: Manifest | None = None
    next_try: float = 0.0

    @property
    def hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.name)

    @property
    def alive(self) -> bool:
        return any(c.running is not None for c in self.containers)


class Executor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.kube = Kube(args.kubeconfig)
        self.node = args.node_name
        self.plan = net.NetworkPlan(args.prefix, args.cidr)
        self.state_dir: Path = args.state_dir
        self.image_bin: Path = args.image_bin
        self.args = args
        self.pods: dict[str, PodRuntime] = {}
        self.services: list[Manifest] = []
        self.forwarders: list[Forwarder] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.last_lease = self.last_node_status = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._setup()
            while not self.stop.is_set():
                try:
                    self._heartbeat()
                    self._sync()
                except (ApiError, OSError, http.client.HTTPException) as exc:
                    log.warning("sync failed: %s", exc)
                self.stop.wait(POLL_SECONDS)
        finally:
            self._teardown()

    def _setup(self) -> None:
        net.cleanup(self.plan.prefix)
        _kill_cgroup(self.plan.prefix)
        net.create_bridge(self.plan)
        for port in self.args.forward:
            self.forwarders.append(Forwarder(self.plan.bridge_ip, port))
        self._register_node()
        self.ready.set()
        log.info("node %s ready: pod network %s on %s", self.node, self.plan.cidr, self.plan.bridge)

    def _teardown(self) -> None:
        self.ready.clear()
        for rt in self.pods.values():
            for c in rt.containers:
                if c.running is not None:
                    c.running.terminate()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            c.running.poll() is None
            for rt in self.pods.values()
            for c in rt.containers
            if c.running
        ):
            time.sleep(0.1)
        for rt in self.pods.values():
            self._release(rt)
        for fwd in self.forwarders:
            fwd.close()
        net.cleanup(self.plan.prefix)
        _kill_cgroup(self.plan.prefix)
        log.info("stopped; pod network removed")

    # --- the node --------------------------------------------------------------------

    def _capacity(self) -> dict[str, str]:
        return {
            "cpu": str(self.args.cpu),
            "memory": self.args.memory,
            "pods": "110",
            "nvidia.com/gpu": str(self.args.gpus),
            "ephemeral-storage": "100Gi",
        }

    def _register_node(self) -> None:
        labels = {
            EXECUTOR_LABEL: "true",
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "tradewind.dev/gpu-pool": self.args.gpu_pool,
            "nvidia.com/gpu.count": str(self.args.gpus),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": labels},
        }
        try:
            self.kube.request("POST", "/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.kube.merge_patch(f"/api/v1/nodes/{self.node}", {"metadata": {"labels": labels}})
        self._heartbeat(force=True)

    def _heartbeat(self, force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self.last_lease > 10:
            self._renew_lease()
            self.last_lease = t
        if force or t - self.last_node_status > 30:
            self._node_status()
            self.last_node_status = t

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_now(),
        }
        if self.kube.merge_patch(path, {"spec": spec}) is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            self.kube.request("POST", path.rsplit("/", 1)[0], lease)

    def _node_status(self) -> None:
        stamp = now()

        def condition(type_: str, status: str, reason: str, message: str) -> Manifest:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }

        status = {
            "capacity": self._capacity(),
            "allocatable": self._capacity(),
            "conditions": [
                condition("Ready", "True", "ExecutorReady", "the executor runs pods"),
                condition("MemoryPressure", "False", "ExecutorHasSufficientMemory", ""),
                condition("DiskPressure", "False", "ExecutorHasNoDiskPressure", ""),
                condition("PIDPressure", "False", "ExecutorHasSufficientPID", ""),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.plan.bridge_ip},
                {"type": "Hostname", "address": self.node},
            ],
            "nodeInfo": {
                "kubeletVersion": "tradewind-executor",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "tradewind-executor://local",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "this checkout's environment",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.kube.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": status})

    # --- pods ------------------------------------------------------------------------

    def _fetch(self, kind: str, namespace: str, name: str) -> Manifest | None:
        return self.kube.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")

    def _token(self, service_account: str, source: Manifest, namespace: str) -> str:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"]] if source.get("audience") else [],
                "expirationSeconds": int(source.get("expirationSeconds", 3600)),
            },
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        try:
            result = self.kube.request("POST", path, request) or {}
        except ApiError as exc:
            raise runtime.ConfigError(f"service account token: {exc}") from exc
        return str(result.get("status", {}).get("token", ""))

    def _sync(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        listed = self.kube.get(f"/api/v1/pods?fieldSelector={selector}") or {}
        self.services = (self.kube.get("/api/v1/services") or {}).get("items", [])
        pods = {p["metadata"]["uid"]: p for p in listed.get("items", [])}
        for rt in self._observe(pods):
            self._prepare(rt)  # every new pod gets its address before any container starts
        self._write_hosts()
        for rt in list(self.pods.values()):
            if rt.pod["metadata"].get("deletionTimestamp"):
                self._terminate(rt)
            elif not rt.finished:
                self._prepare(rt)
                if rt.host is not None:
                    self._step(rt)
            if rt.uid in self.pods:
                self._report(rt)

    def _observe(self, pods: dict[str, Manifest]) -> list[PodRuntime]:
        """Track the listed pods; forget (and kill) the ones gone. Returns the new ones."""
        new: list[PodRuntime] = []
        for uid, pod in pods.items():
            rt = self.pods.get(uid)
            if rt is None:
                phase = (pod.get("status") or {}).get("phase")
                if pod["metadata"].get("deletionTimestamp"):
                    self._final_delete(pod)
                    continue
                if phase in ("Succeeded", "Failed"):
                    continue
                rt = self._adopt(pod)
                if phase == "Running":  # it ran under an executor that is gone
                    self._lost(rt)
                    continue
                new.append(rt)
            rt.pod = pod
        for uid in [u for u in self.pods if u not in pods]:  # force-deleted
            self._release(self.pods.pop(uid))
        return new

    def _adopt(self, pod: Manifest) -> PodRuntime:
        meta = pod["metadata"]
        rt = PodRuntime(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            dir=self.state_dir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}",
            pod=pod,
            containers=[ContainerState(c) for c in pod["spec"]["containers"]],
        )
        self.pods[rt.uid] = rt
        return rt

    def _lost(self, rt: PodRuntime) -> None:
        for c in rt.containers:
            c.waiting = None
            c.terminated = {
                "exitCode": 137,
                "reason": "Error",
                "message": "the executor that ran this container stopped",
                "finishedAt": now(),
            }
        rt.finished = True
        self._report(rt)

    def _prepare(self, rt: PodRuntime) -> None:
        """Network namespace and address, files; the containers start in `_step`."""
        if rt.host is not None or time.monotonic() < rt.next_try:
            return
        if rt.pod["spec"].get("initContainers"):
            self._waiting(rt, "CreateContainerConfigError", "initContainers are not supported")
            return
        used = {r.host for r in self.pods.values() if r.host is not None}
        host = next(h for h in range(2, self.plan.network.num_addresses - 1) if h not in used)
        rt.dir.mkdir(parents=True, exist_ok=True)
        (rt.dir / "etc-hosts").touch()
        (rt.dir / "resolv.conf").write_text(
            f"search {rt.namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:5 attempts:1 timeout:1\n"
        )
        try:
            rt.ip = net.create_pod_network(self.plan, host)
        except net.NetworkError as exc:
            self._waiting(rt, "NetworkNotReady", str(exc))
            return
        rt.host, rt.started = host, now()
        log.info("pod %s/%s: %s in %s", rt.namespace, rt.name, rt.ip, self.plan.netns(host))

    def _waiting(self, rt: PodRuntime, reason: str, message: str) -> None:
        log.warning("pod %s/%s: %s: %s", rt.namespace, rt.name, reason, message)
        for c in rt.containers:
            if c.running is None and c.terminated is None:
                c.waiting = (reason, message)
        rt.next_try = time.monotonic() + 2

    def _restart_policy(self, rt: PodRuntime) -> str:
        return str(rt.pod["spec"].get("restartPolicy", "Always"))

    def _step(self, rt: PodRuntime) -> None:
        """Start containers that should run; notice the ones that exited."""
        for c in rt.containers:
            if c.running is not None:
                code = c.running.poll()
                if code is None:
                    continue
                oom = c.running.oom_killed()
                exit_code = runtime.exit_code(code)
                c.terminated = {
                    "exitCode": exit_code,
                    "reason": "OOMKilled" if oom else "Completed" if exit_code == 0 else "Error",
                    "startedAt": _stamp(c.running.started_at),
                    "finishedAt": now(),
                    "containerID": f"executor://{rt.uid}-{c.spec['name']}",
                }
                c.running.release()
                c.running = None
                log.info(
                    "pod %s/%s: container %s exited with %d%s",
                    rt.namespace, rt.name, c.spec["name"], exit_code, " (OOMKilled)" if oom else "",
                )  # fmt: skip
            policy = self._restart_policy(rt)
            if c.terminated is not None:
                again = policy == "Always" or (
                    policy == "OnFailure" and c.terminated["exitCode"] != 0
                )
                if not again:
                    continue
                c.last_state, c.terminated = {"terminated": c.terminated}, None
                c.restarts += 1
            if time.monotonic() >= rt.next_try:
                self._start(rt, c)
        if not rt.alive and all(c.terminated is not None for c in rt.containers):
            rt.finished = True
            self._release_network(rt)

    def _start(self, rt: PodRuntime, c: ContainerState) -> None:
        assert rt.host is not None
        spec = c.spec
        try:
            volumes = runtime.materialise_volumes(
                rt.pod,
                rt.dir,
                self._fetch,
                lambda sa, source: self._token(sa, source, rt.namespace),
            )
            sizes = runtime.memory_volume_sizes(rt.pod)
            mounts = runtime.container_mounts(spec, volumes, sizes)
            security = runtime.container_security(rt.pod, spec)
            env = self._image_env(rt) | runtime.resolve_env(rt.pod, spec, rt.ip, self._fetch)
        except (runtime.ConfigError, ApiError) as exc:
            self._waiting(rt, "CreateContainerConfigError", str(exc))
            return
        command = [
            runtime.expand(a, env) for a in [*spec.get("command", []), *spec.get("args", [])]
        ]
        if not command:
            self._waiting(rt, "CreateContainerError", "no command: the executor has no images")
            return
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
        c.running = runtime.start_container(
            netns=self.plan.netns(rt.host),
            hostname=rt.hostname,
            command=command,
            env=env,
            mounts=mounts,
            pod_dir=rt.dir,
            workdir=spec.get("workingDir") or "/",
            log_path=rt.dir / f"{spec['name']}.log",
            cgroup=runtime.make_cgroup(self.plan.prefix, rt.uid, spec),
            security=security,
        )
        c.waiting = None
        log.info("pod %s/%s: started %s: %s", rt.namespace, rt.name, spec["name"], command)

    def _image_env(self, rt: PodRuntime) -> dict[str, str]:
        """What the image would set: this checkout's environment first on PATH."""
        return {
            "PATH": f"{self.image_bin}:{SYSTEM_PATH}",
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": rt.hostname,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }

    def _terminate(self, rt: PodRuntime) -> None:
        """Deletion: SIGTERM, the grace period, SIGKILL, then the final delete."""
        if rt.kill_deadline is None:
            meta, spec = rt.pod["metadata"], rt.pod["spec"]
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            rt.kill_deadline = time.monotonic() + float(grace)
            for c in rt.containers:
                if c.running is not None:
                    c.running.terminate()
        running = [c for c in rt.containers if c.running and c.running.poll() is None]
        if running and time.monotonic() < rt.kill_deadline:
            return
        self.pods.pop(rt.uid, None)
        self._release(rt)
        self._final_delete(rt.pod)
        log.info("pod %s/%s: deleted", rt.namespace, rt.name)

    def _final_delete(self, pod: Manifest) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiError):
            self.kube.request("DELETE", path, body)

    def _release(self, rt: PodRuntime) -> None:
        for c in rt.containers:
            if c.running is not None:
                c.running.kill()
                with contextlib.suppress(Exception):
                    c.running.proc.wait(timeout=5)
                c.running.release()
                c.running = None
        self._release_network(rt)

    def _release_network(self, rt: PodRuntime) -> None:
        if rt.host is not None:
            net.delete_pod_network(self.plan, rt.host)
            rt.host = None

    # --- names -----------------------------------------------------------------------

    def _write_hosts(self) -> None:
        """Each pod's /etc/hosts: its own names, pods' `<hostname>.<subdomain>` names and
        headless Services' names, as cluster DNS would answer them."""
        running = [rt for rt in self.pods.values() if rt.ip is not None and rt.host is not None]
        fqdn: list[tuple[str, str, list[str]]] = []  # (namespace, ip, names)
        for rt in running:
            sub = rt.pod["spec"].get("subdomain")
            if sub and self._headless(rt.namespace, sub) is not None:
                full = f"{rt.hostname}.{sub}.{rt.namespace}.svc.{CLUSTER_DOMAIN}"
                fqdn.append((rt.namespace, rt.ip or "", [full, f"{rt.hostname}.{sub}"]))
        for svc in self.services:
            if (svc.get("spec") or {}).get("clusterIP") != "None":
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selector = (svc.get("spec") or {}).get("selector") or {}
            for rt in running:
                labels = rt.pod["metadata"].get("labels") or {}
                if selector and rt.namespace == ns and selector.items() <= labels.items():
                    full = f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"
                    fqdn.append((ns, rt.ip or "", [full, name]))
        for rt in running:
            own = [n for ns, ip, names in fqdn if ip == rt.ip and ns == rt.namespace for n in names]
            entries = [(rt.ip or "", [*dict.fromkeys([*own, rt.hostname])])]
            for ns, ip, names in fqdn:
                if ip != rt.ip:
                    entries.append((ip, names if ns == rt.namespace else names[:1]))
            runtime.write_in_place(rt.dir / "etc-hosts", runtime.hosts_file(entries))

    def _headless(self, namespace: str, name: str) -> Manifest | None:
        for svc in self.services:
            meta = svc["metadata"]
            if meta["namespace"] == namespace and meta["name"] == name:
                return svc
        return None

    # --- status ----------------------------------------------------------------------

    def _container_status(self, rt: PodRuntime, c: ContainerState) -> Manifest:
        state: Manifest
        if c.running is not None:
            state = {"running": {"startedAt": _stamp(c.running.started_at)}}
        elif c.terminated is not None:
            state = {"terminated": c.terminated}
        else:
            reason, message = c.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        return {
            "name": c.spec["name"],
            "image": c.spec.get("image", ""),
            "imageID": "",
            "containerID": f"executor://{rt.uid}-{c.spec['name']}",
            "ready": c.running is not None,
            "started": c.running is not None,
            "restartCount": c.restarts,
            "state": state,
            "lastState": c.last_state,
        }

    def _report(self, rt: PodRuntime) -> None:
        statuses = [self._container_status(rt, c) for c in rt.containers]
        ready_all = all(c.running is not None for c in rt.containers)
        terminated = [c.terminated for c in rt.containers]
        if all(t is not None for t in terminated):
            failed = any(t is not None and t["exitCode"] != 0 for t in terminated)
            phase = "Failed" if failed else "Succeeded"
        elif rt.alive:
            phase = "Running"
        else:
            phase = "Pending"
        old = rt.pod.get("status") or {}
        scheduled = [c for c in old.get("conditions") or [] if c["type"] == "PodScheduled"]
        stamp = now()

        def cond(type_: str, ok: bool) -> Manifest:
            return {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": stamp}

        status: Manifest = {
            "phase": phase,
            "hostIP": self.plan.bridge_ip,
            "hostIPs": [{"ip": self.plan.bridge_ip}],
            "containerStatuses": statuses,
            "conditions": [
                *scheduled,
                cond("PodReadyToStartContainers", rt.ip is not None),
                cond("Initialized", True),
                cond("ContainersReady", ready_all and phase == "Running"),
                cond("Ready", ready_all and phase == "Running"),
            ],
        }
        if rt.ip is not None:
            status |= {"podIP": rt.ip, "podIPs": [{"ip": rt.ip}]}
        if rt.started is not None:
            status["startTime"] = rt.started
        comparable = _without_times(status)
        if rt.reported == comparable:
            return
        path = f"/api/v1/namespaces/{rt.namespace}/pods/{rt.name}/status"
        try:
            self.kube.merge_patch(path, {"status": status})
        except ApiError as exc:
            log.warning("pod %s/%s: status: %s", rt.namespace, rt.name, exc)
            return
        rt.reported = comparable


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without_times(status: Manifest) -> Manifest:
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return out


def _kill_cgroup(prefix: str) -> None:
    """Kill what is left in this executor's cgroups and remove them."""
    root = runtime.CGROUP_ROOT / f"tradewind-{prefix}"
    if not root.is_dir():
        return
    for group in root.iterdir():
        if group.is_dir():
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    with contextlib.suppress(OSError):
        root.rmdir()


def _serve_health(executor: Executor, port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = executor.ready.is_set()
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok" if ok else b"starting")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pod_endpoints(stack: DevStack) -> dict[str, str]:
    """The operator's settings for pods on this executor: MinIO and MLflow at the bridge."""
    bridge, ports = stack.state["executor"]["bridgeIP"], stack.state["ports"]
    out = {"TRADEWIND_S3_ENDPOINT": f"http://{bridge}:{ports['minio']}"}
    if stack.config.with_mlflow:
        out["TRADEWIND_MLFLOW_TRACKING_URI"] = f"http://{bridge}:{ports['mlflow']}"
    return out


def executor_process(stack: DevStack) -> ManagedProcess:
    """The executor as one of the stack's processes (it needs root for netns and mounts)."""
    import sys

    from tradewind.devstack.processes import ManagedProcess, http_ok

    plan, ports = stack.state["executor"], stack.state["ports"]
    forward = [ports["minio"]] + ([ports["mlflow"]] if stack.config.with_mlflow else [])
    argv = [sys.executable, "-m", "tradewind.devstack.executor"]
    argv += [f"--kubeconfig={stack.kubeconfig}", f"--state-dir={stack.dir / 'executor'}"]
    argv += [f"--prefix={plan['prefix']}", f"--cidr={plan['cidr']}"]
    argv += [f"--health-port={ports['executor']}", f"--image-bin={Path(sys.executable).parent}"]
    argv += [f"--gpus={stack.config.gpus_per_node}", f"--gpu-pool={stack.config.gpu_pool}"]
    argv += [f"--forward={p}" for p in forward]
    url = f"http://127.0.0.1:{ports['executor']}/healthz"
    return ManagedProcess(
        "executor",
        argv,
        stack.dir / "logs" / "executor.log",
        lambda: http_ok(url),
        ports=[ports["executor"]],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tradewind.devstack.executor", description=__doc__)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True, help="Pods' folders and logs.")
    p.add_argument("--node-name", default="executor-0")
    p.add_argument("--prefix", required=True, help="Name prefix of netns, veths and bridge.")
    p.add_argument("--cidr", required=True, help="The pod network, a /24.")
    p.add_argument("--forward", type=int, action="append", default=[], help="Port to relay.")
    p.add_argument("--health-port", type=int, required=True)
    p.add_argument("--image-bin", type=Path, required=True, help="First on the pods' PATH.")
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-pool", default="a100")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    executor = Executor(args)
    server = _serve_health(executor, args.health_port)

    def on_signal(signum: int, _frame: object) -> None:
        executor.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        executor.run()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
