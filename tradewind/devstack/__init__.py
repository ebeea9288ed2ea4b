"""A real local stack for tests and the demo: Kubernetes control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok with fake GPU nodes), MinIO and MLflow on 127.0.0.1."""

from tradewind.devstack.processes import StackError
from tradewind.devstack.stack import DevStack, StackConfig, default_dev_dir

__all__ = ["DevStack", "StackConfig", "StackError", "default_dev_dir"]
