"""The real node's storage: a default StorageClass and PersistentVolumes in folders under the
node's own, as a cluster's default class gives claims that name none (the chart's Optuna,
MinIO and MLflow claims).

Static, as on a node with local disks: `kubernetes.io/no-provisioner` binds a claim to a free
volume at least its size once its first pod is scheduled (WaitForFirstConsumer). The folders
are world-writable: a hostPath volume gets no fsGroup, and the chart's pods run as uid 10001.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tradewind.devstack.node_config import NodePlan

CLASS = "tradewind-local"
VOLUMES = 6
VOLUME_SIZE = "20Gi"
"""Each volume's stated capacity (the chart's largest claim, MinIO's, asks 20Gi)."""


def manifests(plan: NodePlan) -> list[dict[str, Any]]:
    """The StorageClass (the cluster's default) and VOLUMES PersistentVolumes on the node."""
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }
    on_the_node = {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/hostname",
                            "operator": "In",
                            "values": [plan.node_name],
                        }
                    ]
                }
            ]
        }
    }
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{CLASS}-{i}"},
            "spec": {
                "capacity": {"storage": VOLUME_SIZE},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": CLASS,
                "hostPath": {"path": str(volume_dir(plan, i)), "type": "Directory"},
                "nodeAffinity": on_the_node,
            },
        }
        for i in range(VOLUMES)
    ]
    return [storage_class, *volumes]


def volume_dir(plan: NodePlan, index: int) -> Path:
    return plan.dir / "volumes" / f"pv-{index}"


def prepare(plan: NodePlan) -> str:
    """Make the volumes' folders (world-writable); returns the manifests as a kubectl
    apply document."""
    for i in range(VOLUMES):
        folder = volume_dir(plan, i)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o1777)  # like /tmp: anyone writes, only owners remove
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(plan)})
