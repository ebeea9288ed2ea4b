"""Kueue in the dev stack (`tradewind dev up --kueue`): the real controller (built from
sigs.k8s.io/kueue by hack/build-binaries.sh, with its CRDs), out of cluster on 127.0.0.1.

Its configuration: no leader election, no internal cert management (its webhook server serves
the stack's own certificate from a folder; no webhook is registered with the apiserver:
Tradewind creates a queued run's Jobs suspended itself, and Kueue's controller admits Jobs
created so), metrics off, only the batch/job integration, and the feature gates an out of
cluster controller needs: no visibility API server, no WaitForPodsReady eviction.

Kueue v0.19 reads a metrics certificate from a fixed path even with metrics off
(METRICS_CERT_DIR): the stack writes one there if none is there (as root, or with that folder
writable).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tradewind.devstack.processes import ManagedProcess, StackError, http_ok, stop

if TYPE_CHECKING:
    from tradewind.devstack.stack import DevStack

NAME = "kueue"
NAMESPACE = "kueue-system"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
"""Where Kueue v0.19 reads its metrics certificate (hard-coded in cmd/kueue) unless its
internal cert management is on."""
FEATURE_GATES = {"VisibilityOnDemand": False, "DisableWaitForPodsReady": True}
"""VisibilityOnDemand would serve an aggregated API (an APIService in the cluster);
WaitForPodsReady (on by default) evicts a Workload whose pods are not ready in time."""
PORTS = ("kueue-health", "kueue-webhook")


def missing_binaries(stack: DevStack) -> list[str]:
    """What `--kueue` needs in the binary cache and is not there: the controller, its CRDs
    (`hack/build-binaries.sh kueue`)."""
    needed = ("kueue", "kueue-crds/kueue.x-k8s.io_workloads.yaml")
    return [n for n in needed if not (stack.bin / n).is_file()]


def config(stack: DevStack) -> str:
    """Kueue's configuration file (config.kueue.x-k8s.io/v1beta2; Kueue parses it strictly)."""
    ports = stack.state["ports"]
    doc = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {
            "host": "127.0.0.1",
            "port": ports["kueue-webhook"],
            "certDir": str(_cert_dir(stack)),
        },
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
        "metrics": {"bindAddress": "0"},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": FEATURE_GATES,
    }
    return json.dumps(doc, indent=2)  # JSON is YAML


def process(stack: DevStack) -> ManagedProcess:
    ports, d = stack.state["ports"], stack.dir
    config_file = d / "kueue-config.yaml"
    config_file.write_text(config(stack))
    health = f"http://127.0.0.1:{ports['kueue-health']}/readyz"
    return ManagedProcess(
        NAME,
        [str(stack.bin / "kueue"), f"--config={config_file}", f"--kubeconfig={stack.kubeconfig}"],
        d / "logs" / "kueue.log",
        lambda: http_ok(health),
        ports=[ports[p] for p in PORTS],
        ready_timeout=120,
    )


def _cert_dir(stack: DevStack) -> Path:
    return stack.dir / "kueue-certs"


def prepare(stack: DevStack) -> None:
    """Before Kueue starts: its CRDs (server-side: the Workload CRD is too big for the
    last-applied annotation) and namespace in the cluster, its webhook certificate (the
    stack's admin certificate, which names 127.0.0.1) and its metrics certificate."""
    pki, certs = stack.dir / "pki", _cert_dir(stack)
    certs.mkdir(parents=True, exist_ok=True)
    _copy_cert(pki, certs)
    if not (METRICS_CERT_DIR / "tls.key").is_file():
        try:
            METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
            _copy_cert(pki, METRICS_CERT_DIR)
        except OSError as exc:
            raise StackError(
                f"kueue: it reads a metrics certificate from {METRICS_CERT_DIR}/tls.crt and "
                f"tls.key even with metrics off, and that folder cannot be written ({exc}); "
                "create it with any certificate and key, or run as root"
            ) from exc
    crds = (stack.bin / "kueue-crds").resolve()  # kubectl reads a link to a folder as a file
    stack._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    stack._kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *[f"crd/{p.stem.split('_', 1)[1]}.kueue.x-k8s.io" for p in sorted(crds.glob("*.yaml"))],
    )  # fmt: skip
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    stack._kubectl("apply", "-f", "-", stdin=json.dumps(namespace))


def _copy_cert(pki: Path, to: Path) -> None:
    shutil.copyfile(pki / "admin.crt", to / "tls.crt")
    key = to / "tls.key"
    shutil.copyfile(pki / "admin.key", key)
    key.chmod(0o600)


def stop_kueue(stack: DevStack) -> None:
    """Stop Kueue only (its CRDs and objects stay); the stack no longer starts it."""
    pids = stack.state.get("pids", {})
    stop(pids.pop(NAME, None))
    stack.state.pop(NAME, None)
    stack.with_kueue = False
    stack._save()
