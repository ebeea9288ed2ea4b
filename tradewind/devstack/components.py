"""Command lines of the dev stack's components (flags as envtest and kwokctl use them)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tradewind.devstack import kwok
from tradewind.devstack.processes import ManagedProcess

if TYPE_CHECKING:
    from tradewind.devstack.stack import DevStack

SERVICE_CIDR = "10.96.0.0/24"
HEALTH_PATHS = "/healthz,/readyz,/livez,/metrics"
GO_GC_PERCENT = "200"
"""The control plane's Go GC target (GOGC; Go's default is 100). At a thousand runs starting
the apiserver spent ~14% of its CPU in the garbage collector (bench/operator_scale.py); 200
halves that for ~1.5x the heap. A GOGC in the environment wins."""


def build_processes(stack: DevStack) -> list[ManagedProcess]:
    """Every component, in start order."""
    ports, b, d = stack.state["ports"], stack.bin, stack.dir
    pki, kubeconfig, logs = d / "pki", str(stack.kubeconfig), d / "logs"
    ready = stack.ready_checks()
    admin_key, admin_crt, ca = str(pki / "admin.key"), str(pki / "admin.crt"), str(pki / "ca.crt")
    # client-go's rate limit off in practice (kwokctl's --disable-qps-limits values): with a
    # thousand runs starting, the Job controller and the scheduler must not queue behind it.
    common_client = [f"--kubeconfig={kubeconfig}", "--kube-api-qps=5000", "--kube-api-burst=10000"]
    loopback_serving = [
        "--bind-address=127.0.0.1",
        f"--authorization-always-allow-paths={HEALTH_PATHS}",
    ]

    stages = d / "kwok-stages.yaml"
    stages.write_text(kwok.render_stages(b / "kwok-stages"))
    # kwok moves at most 4 pods through a stage at once by default: with hundreds of pods
    # starting together (bench/operator_scale.py) that queue, not the cluster, sets the pace.
    kwok_config = d / "kwok-config.yaml"
    kwok_config.write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
        "kind: KwokConfiguration\n"
        "options:\n"
        "  podPlayStageParallelism: 32\n"
        "  nodePlayStageParallelism: 4\n"  # a config file gets no defaults: kwok's own
        "  nodeLeaseParallelism: 4\n"
    )
    go_env = {"GOGC": os.environ.get("GOGC", GO_GC_PERCENT)}
    profiling = f"--profiling={str(stack.config.profiling).lower()}"
    minio = stack.state["minio"]
    minio_url = f"http://127.0.0.1:{ports['minio']}"

    return [
        ManagedProcess(
            "etcd",
            [
                str(b / "etcd"),
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-cluster=default=http://127.0.0.1:{ports['etcd-peer']}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
            ],
            logs / "etcd.log",
            ready["etcd"],
            env=go_env,
            ports=[ports["etcd"], ports["etcd-peer"]],
        ),
        ManagedProcess(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['kube-apiserver']}",
                f"--tls-cert-file={admin_crt}",
                f"--tls-private-key-file={admin_key}",
                f"--client-ca-file={ca}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={admin_key}",
                f"--service-account-signing-key-file={admin_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # As on hardened clusters: setting blockOwnerDeletion needs `update` on the
                # owner's finalizers (the operator's children block their run's deletion).
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                profiling,
            ],
            logs / "kube-apiserver.log",
            ready["kube-apiserver"],
            env=go_env,
            ports=[ports["kube-apiserver"]],
            ready_timeout=120,
        ),
        ManagedProcess(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                *common_client,
                *loopback_serving,
                f"--secure-port={ports['kube-controller-manager']}",
                "--leader-elect=false",
                f"--root-ca-file={ca}",
                f"--service-account-private-key-file={admin_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Not the legacy Endpoints controllers: nothing here reads Endpoints (deprecated
                # since 1.33; DNS and proxies read EndpointSlices), and at a thousand runs they
                # were ~1.7 writes per run.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-endpoint,-endpointslicemirroring",
                # 5 by default; each Job is synced on every change of its pods
                "--concurrent-job-syncs=50",
                # one EndpointSlice write per Service and second, not per pod change (0 by
                # default; large clusters batch the same way)
                "--endpointslice-updates-batch-period=1s",
                profiling,
            ],
            logs / "kube-controller-manager.log",
            ready["kube-controller-manager"],
            env=go_env,
            ports=[ports["kube-controller-manager"]],
        ),
        ManagedProcess(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                *common_client,
                *loopback_serving,
                f"--secure-port={ports['kube-scheduler']}",
                "--leader-elect=false",
                profiling,
            ],
            logs / "kube-scheduler.log",
            ready["kube-scheduler"],
            env=go_env,
            ports=[ports["kube-scheduler"]],
        ),
        ManagedProcess(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={stages}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-label-selector={kwok.NODE_LABEL}=true",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
            ],
            logs / "kwok.log",
            ready["kwok"],
            env=go_env,
            ports=[ports["kwok"]],
        ),
        ManagedProcess(
            "minio",
            [
                str(b / "minio"),
                "server",
                str(d / "minio"),
                f"--address=127.0.0.1:{ports['minio']}",
                f"--console-address=127.0.0.1:{ports['minio-console']}",
                "--quiet",
            ],
            logs / "minio.log",
            ready["minio"],
            env={"MINIO_ROOT_USER": minio["user"], "MINIO_ROOT_PASSWORD": minio["password"]},
            ports=[ports["minio"], ports["minio-console"]],
        ),
        ManagedProcess(
            "mlflow",
            [
                stack.python_bin("mlflow"),
                "server",
                "--host=127.0.0.1",
                f"--port={ports['mlflow']}",
                f"--backend-store-uri=sqlite:///{d / 'mlflow.db'}",
                "--artifacts-destination=s3://mlflow/artifacts",
                "--workers=1",
            ],
            logs / "mlflow.log",
            ready["mlflow"],
            env={
                "MLFLOW_S3_ENDPOINT_URL": minio_url,
                "AWS_ACCESS_KEY_ID": minio["user"],
                "AWS_SECRET_ACCESS_KEY": minio["password"],
                "AWS_DEFAULT_REGION": "us-east-1",
                # The job runner (huey consumers) is for GenAI jobs; without it the server
                # needs ~10x less memory.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            ports=[ports["mlflow"]],
            ready_timeout=120,
        ),
    ]
