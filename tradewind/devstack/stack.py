"""The local dev stack: etcd -> kube-apiserver -> controller-manager -> scheduler -> kwok with
fake GPU nodes -> MinIO -> MLflow, on 127.0.0.1, from binaries built by hack/.

`up` is idempotent (healthy components are kept, missing ones started on their recorded
ports), `down` stops every process it started, `status` reports each component.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradewind.devstack import kueue, kwok, node_relay, real_node, registry
from tradewind.devstack.certs import write_certificates
from tradewind.devstack.processes import (
    ManagedProcess,
    StackError,
    free_port,
    http_ok,
    insecure_tls,
    pid_alive,
    start,
    stop,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "minio",
    "mlflow",
)
BUCKETS = ("tradewind", "mlflow")


def cache_dir() -> Path:
    return Path(os.environ.get("TRADEWIND_CACHE", Path.home() / ".cache" / "tradewind"))


def default_dev_dir() -> Path:
    return Path(os.environ.get("TRADEWIND_DEV_DIR", Path.home() / ".tradewind" / "dev"))


@dataclass
class StackConfig:
    """What `tradewind dev up` starts."""

    dev_dir: Path
    nodes: int = 4
    gpus_per_node: int = 8
    gpu_pool: str = "a100"
    with_mlflow: bool = True
    profiling: bool = False
    """Serve Go's /debug/pprof on the apiserver, controller-manager and scheduler."""
    kueue: bool = False
    """Also run the Kueue controller (tradewind.devstack.kueue)."""
    real_node: bool = False
    """Also run a real node: kubelet, containerd, CNI, CoreDNS, kube-proxy (real_node.py)."""
    node_registries: tuple[str, ...] = ()
    """host:port of local registries the real node pulls from over plain http."""
    registry: bool = False
    """Also run an image registry with a login on 127.0.0.1 (registry.py); the real node
    pulls from it with the pods' pull secrets."""


class DevStack:
    """The processes and files of one dev stack (one folder: certs, data, logs, state)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.dir = config.dev_dir
        self.bin = cache_dir() / "bin" / "current"
        self.state_path = self.dir / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        )
        self.with_kueue = config.kueue or kueue.NAME in self.state
        self.with_real_node = config.real_node or real_node.NAME in self.state
        self.with_registry = config.registry or registry.NAME in self.state

    # --- public ------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def env(self) -> dict[str, str]:
        """Variables that point kubectl, the operator, MinIO and MLflow clients at this stack."""
        ports, creds = self.state.get("ports", {}), self.state.get("minio", {})
        out = {"KUBECONFIG": str(self.kubeconfig)}
        if "minio" in ports:
            endpoint = f"http://127.0.0.1:{ports['minio']}"
            out |= {
                "AWS_ENDPOINT_URL": endpoint,
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": creds["user"],
                "AWS_SECRET_ACCESS_KEY": creds["password"],
            }
        if "mlflow" in ports:
            out["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports['mlflow']}"
        return out

    def pod_endpoints(self) -> dict[str, str]:
        """With the real node: the operator's TRADEWIND_* settings that point pods at MinIO
        and MLflow through the node's relay on its bridge (reachable from this machine too)."""
        if "ports" not in self.state or not self.with_real_node:
            return {}
        plan = real_node.load_plan(self)
        return node_relay.pod_endpoints(self, plan) if plan is not None else {}

    def up(self, log: Callable[[str], None] = print) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_binaries()
        write_certificates(self.dir / "pki")
        self._assign_ports()
        self._write_kubeconfig()
        if self.with_real_node:
            real_node.prepare(self)
        pids = self.state.setdefault("pids", {})
        for proc in self._processes():
            if pid_alive(pids.get(proc.name)) and proc.ready():
                log(f"{proc.name}: running (pid {pids[proc.name]})")
                continue
            stop(pids.get(proc.name))
            if proc.name == kueue.NAME:
                kueue.prepare(self)
            pids[proc.name] = start(proc)
            self._save()
            log(f"{proc.name}: started (pid {pids[proc.name]}, log {proc.log})")
            if proc.name == "kwok":
                self._create_nodes()
            if proc.name == "minio":
                self._create_buckets()
            if proc.name in real_node.PROCESSES:
                real_node.after_start(self, proc.name, log)
        if self.with_registry:
            reg = registry.start(self.image_registry())
            state = reg.dir / registry.STATE_FILE
            log(f"registry: {reg.prefix} (login {reg.user}, its password in {state})")
        log(f"ready: export KUBECONFIG={self.kubeconfig}")

    def image_registry(self) -> registry.Registry:
        """The stack's image registry (`--registry`): address, login, folder."""
        return registry.load_or_create(self.dir / registry.NAME, self.bin)

    def down(self, log: Callable[[str], None] = print) -> None:
        if self.with_real_node:
            real_node.down(self, log)
        if self.with_registry and (self.dir / registry.NAME / registry.STATE_FILE).is_file():
            registry.stop(self.image_registry())
            log("registry: stopped")
        pids = self.state.get("pids", {})
        for name in (kueue.NAME, *reversed(COMPONENTS)):
            if pid_alive(pids.get(name)):
                stop(pids[name])
                log(f"{name}: stopped")
            pids.pop(name, None)
        if self.state:
            self._save()

    def status(self) -> dict[str, str]:
        """Component -> 'running', 'unhealthy' or 'stopped'."""
        names = (*COMPONENTS, kueue.NAME) if self.with_kueue else COMPONENTS
        names = (*names, *real_node.PROCESSES) if self.with_real_node else names
        names = (*names, registry.NAME) if self.with_registry else names
        if not self.state.get("ports"):
            return dict.fromkeys(names, "stopped")
        pids = self.state.get("pids", {})
        out = dict.fromkeys(names, "stopped")
        for proc in self._processes():
            alive = pid_alive(pids.get(proc.name))
            out[proc.name] = "stopped" if not alive else "running" if proc.ready() else "unhealthy"
        if self.with_registry:
            reg = self.image_registry()
            alive = pid_alive(reg.pid)
            out[registry.NAME] = (
                "stopped" if not alive else "running" if registry.answers(reg) else "unhealthy"
            )
        return out

    def destroy(self) -> None:
        """Stop everything and delete the stack's folder (etcd data, MinIO data, logs)."""
        self.down(log=lambda _: None)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.state = {}

    # --- wiring ------------------------------------------------------------------------

    def _check_binaries(self) -> None:
        needed = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
            "kwok",
            "minio",
        ]
        needed += [registry.NAME] if self.with_registry else []
        missing = [b for b in needed if not (self.bin / b).is_file()]
        if self.with_kueue:
            missing += kueue.missing_binaries(self)
        if self.with_real_node:
            real_node.check_host(self)
        if missing:
            raise StackError(
                f"missing binaries in {self.bin}: {', '.join(missing)}; "
                "build them with hack/build-binaries.sh (cached by version)"
            )

    def _assign_ports(self) -> None:
        ports = self.state.setdefault("ports", {})
        for name in (
            "etcd",
            "etcd-peer",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "minio",
            "minio-console",
            "mlflow",
        ):
            ports.setdefault(name, free_port())
        self.state.setdefault("minio", {"user": "tradewind", "password": secrets.token_urlsafe(18)})
        if self.with_kueue:
            for name in kueue.PORTS:
                ports.setdefault(name, free_port())
            self.state.setdefault(kueue.NAME, {"webhook": ports["kueue-webhook"]})
        if self.with_registry:  # before the real node's plan, which trusts it
            address = registry.load_or_create(self.dir / registry.NAME, self.bin).address
            self.state.setdefault(registry.NAME, {"address": address})
        if self.with_real_node:
            real_node.plan(self, list(self.config.node_registries))
        self._save()

    def _save(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=2))
        self.state_path.chmod(0o600)

    def _write_kubeconfig(self) -> None:
        pki = self.dir / "pki"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tradewind-dev",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.state['ports']['kube-apiserver']}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "tradewind-admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "tradewind-dev",
                    "context": {"cluster": "tradewind-dev", "user": "tradewind-admin"},
                }
            ],
            "current-context": "tradewind-dev",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))

    def _client_tls(self) -> ssl.SSLContext:
        pki = self.dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def _kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _create_nodes(self) -> None:
        if self.config.nodes == 0:
            return
        nodes = [
            kwok.fake_node(f"gpu-node-{i}", self.config.gpus_per_node, self.config.gpu_pool)
            for i in range(self.config.nodes)
        ]
        self._kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}),
        )
        self._kubectl(
            "wait",
            "--for=condition=Ready",
            "node",
            "-l",
            f"{kwok.NODE_LABEL}=true",
            "--timeout=60s",
        )

    def _create_buckets(self) -> None:
        from tradewind.trainer.storage import s3_client_from_env

        client = s3_client_from_env(self.env())
        for bucket in BUCKETS:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)

    def _processes(self) -> list[ManagedProcess]:
        from tradewind.devstack.components import build_processes

        procs = build_processes(self)
        if self.with_kueue:
            procs.append(kueue.process(self))
        if self.with_real_node:
            procs += real_node.processes(self)
        return [p for p in procs if p.name != "mlflow" or self.config.with_mlflow]

    def python_bin(self, name: str) -> str:
        """A console script installed next to this interpreter (mlflow)."""
        return str(Path(sys.executable).parent / name)

    def ready_checks(self) -> dict[str, Callable[[], bool]]:
        ports = self.state["ports"]
        tls = self._client_tls()
        return {
            "etcd": lambda: http_ok(f"http://127.0.0.1:{ports['etcd']}/health", expect="true"),
            "kube-apiserver": lambda: http_ok(
                f"https://127.0.0.1:{ports['kube-apiserver']}/readyz", tls
            ),
            "kube-controller-manager": lambda: http_ok(
                f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz", insecure_tls()
            ),
            "kube-scheduler": lambda: http_ok(
                f"https://127.0.0.1:{ports['kube-scheduler']}/healthz", insecure_tls()
            ),
            "kwok": lambda: http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            "minio": lambda: http_ok(f"http://127.0.0.1:{ports['minio']}/minio/health/ready"),
            "mlflow": lambda: http_ok(f"http://127.0.0.1:{ports['mlflow']}/health"),
        }
