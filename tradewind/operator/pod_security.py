"""What makes a training pod pass PodSecurity `restricted`: the security contexts, the
emptyDirs the trainer writes on (the root filesystem is read-only), a size limit on the
memory-backed `/dev/shm`, and no service-account token unless the run names an account.

Pure data for `builders.build_job`. A run's `podTemplate.securityContext` and
`containerSecurityContext` are merged over these (`merged`): the defaults pass `restricted`;
what a run changes is its own choice, and PodSecurity admission judges it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradewind.operator.builders import Run

Manifest = dict[str, Any]

TRAINER_UID = 10001
"""uid, gid and fsGroup of every training pod: the trainer image's `tradewind` user (the
Dockerfile's `USER 10001:10001`). Numeric, so the kubelet can check runAsNonRoot whatever
image a run names."""
HOME_DIR = "/home/tradewind"
"""The trainer image's home folder; an emptyDir in the pod (feature cache, matplotlib's and
torch's caches live under it)."""
STATE_DIR = "/var/tmp/tradewind"
"""The trainer's local checkpoints and files before upload (`--state-dir`)."""
SHM_DIR = "/dev/shm"
SHM_DEFAULT_LIMIT = "1Gi"
"""`/dev/shm` size limit of a pod whose run sets no memory limit or request (PyTorch's
DataLoader workers and NCCL use it; 16 times Docker's 64Mi default)."""

WRITABLE = {"state": STATE_DIR, "tmp": "/tmp", "home": HOME_DIR}
"""Volume name -> path: the only places the trainer writes, each an emptyDir."""
OPERATOR_VOLUMES = ("config", "dshm", *WRITABLE)
"""Every volume name the operator gives a training pod (a user volume may not reuse one)."""

SCRATCH_ENV = (("HOME", HOME_DIR), ("LOGNAME", "tradewind"))
"""HOME on its emptyDir whatever the image says; LOGNAME so Python's getpass (MLflow's user
tag, torch's cache folder) works in an image with no passwd entry for TRAINER_UID."""


def pod_security_context(override: Manifest | None = None) -> Manifest:
    """The pod's, with a run's `podTemplate.securityContext` merged over it."""
    return merged(
        {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        override,
    )


def container_security_context(override: Manifest | None = None) -> Manifest:
    """The trainer container's, with `podTemplate.containerSecurityContext` merged over it."""
    return merged(
        {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        override,
    )


def extra_container_security_context(override: Manifest | None = None) -> Manifest:
    """A run's init container's or sidecar's: what `restricted` asks of every container (the
    pod's context gives it non-root and seccomp), with its own securityContext merged over
    it. Its root filesystem stays writable: it is the user's image."""
    return merged({"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, override)


def merged(base: Manifest, override: Manifest | None) -> Manifest:
    """`override` over `base`: objects merged key by key, anything else (lists included)
    replaced by the override's value. E.g. `capabilities: {add: [IPC_LOCK]}` keeps
    `drop: [ALL]` beside it."""
    out = dict(base)
    for key, value in (override or {}).items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            value = merged(old, value)
        out[key] = value
    return out


def shm_size_limit(run: Run) -> str:
    """The run's memory limit, else its memory request, else SHM_DEFAULT_LIMIT: shared
    memory is the pod's memory, so it never gets more than the pod may use."""
    resources = run.spec.resources
    memory = resources.limits.get("memory") or resources.requests.get("memory")
    return str(memory) if memory else SHM_DEFAULT_LIMIT


def scratch_volumes(run: Run) -> list[Manifest]:
    """`/dev/shm` in memory with a size limit, then the writable emptyDirs."""
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size_limit(run)}}
    return [shm, *({"name": name, "emptyDir": {}} for name in WRITABLE)]


def scratch_mounts() -> list[Manifest]:
    mounts = [{"name": "dshm", "mountPath": SHM_DIR}]
    return mounts + [{"name": name, "mountPath": path} for name, path in WRITABLE.items()]


def scratch_env() -> list[Manifest]:
    return [{"name": name, "value": value} for name, value in SCRATCH_ENV]
