"""Spec pieces about a run's pods: the pod-template patch (`spec.podTemplate`), resources,
accelerators and gang placement. Re-exported by `tradewind.api.common`.

The operator builds each training pod (operator/builders.py) and `podTemplate` is a patch
over it. The fields the operator owns (the trainer container, the restart policy, the pods'
DNS names, its volumes and mount paths) are declared here only to be refused with a message
that says what to use instead: a CEL rule each, so `kubectl apply` and `tradewind validate`
refuse them alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from tradewind.api.base import ApiModel, CelRule, DNSLabel, LongStr, Quantity

TRAINER_CONTAINER = "trainer"
"""The name of the container the operator runs the training in."""
OPERATOR_VOLUMES = ("config", "dshm", "state", "tmp", "home")
"""Volumes the operator gives every training pod (operator/pod_security.py, builders.py)."""
OPERATOR_PATHS = ("/etc/tradewind", "/var/tmp/tradewind", "/dev/shm", "/tmp", "/home/tradewind")
"""Where those volumes are mounted in the trainer container."""
OPERATOR_TREES = ("/etc/tradewind", "/var/tmp/tradewind")
"""Of those, the folders nothing may be mounted under (the run's config, the trainer's
checkpoints before upload); a mount under /tmp or the home folder (e.g. a cache) is fine."""

OPERATOR_OWNED = {
    "containers": "the training container is built from spec.image, spec.entrypoint (your "
    "command or module), spec.resources, spec.accelerator and podTemplate.env, envFrom, "
    "volumeMounts and containerSecurityContext; add containers of your own with "
    "podTemplate.initContainers or podTemplate.sidecars",
    "restartPolicy": "a failed pod fails its attempt and the operator restarts the whole "
    "gang from the latest checkpoint; use spec.maxRestarts",
    "hostname": "pods are named by their completion index for torchrun's rendezvous",
    "subdomain": "pods are reached through the run's headless Service for torchrun's rendezvous",
    "setHostnameAsFQDN": "torchrun's rendezvous resolves the pods' names as the operator sets them",
    "activeDeadlineSeconds": "use spec.activeDeadlineSeconds, which covers every attempt",
}
"""Pod fields the operator sets itself: field -> why, and what to use instead."""


class ResourceList(ApiModel):
    """Compute resources per node (pod). GPUs and other devices are not set here: see
    `accelerator` and `device`."""

    requests: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(
        default_factory=dict, max_length=16
    )
    """Minimum resources per pod, e.g. `{cpu: "4", memory: 16Gi}`."""
    limits: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(
        default_factory=dict, max_length=16
    )
    """Maximum resources per pod, e.g. `{memory: 32Gi}`."""


EXTENDED_RESOURCE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
"""A device plugin's extended resource: `<domain>/<name>`, e.g. `nvidia.com/gpu`."""


class Accelerator(ApiModel):
    """The devices each pod gets: any extended resource a device plugin advertises, as many
    per pod as `perNode` (requested and limited alike), whatever `procsPerNode` is."""

    resource: Annotated[str, Field(min_length=3, max_length=253, pattern=EXTENDED_RESOURCE)]
    """The extended resource: `nvidia.com/gpu`, `amd.com/gpu` (ROCm), `gpu.intel.com/i915`,
    a MIG profile of the mixed strategy such as `nvidia.com/mig-1g.10gb`, or any other
    device plugin's `<domain>/<name>`."""
    per_node: int | None = Field(default=None, ge=1, le=256)
    """Devices per pod; unset is procsPerNode for a TrainingRun (one per process) and 1 for
    an RLRun (one per agent's pod)."""

    cel_rules = (
        CelRule(
            "!self.resource.startsWith('kubernetes.io/') && "
            "!self.resource.contains('.kubernetes.io/')",
            "resource is a native resource (kubernetes.io): set cpu, memory and the like in "
            "spec.resources; an accelerator is a device plugin's extended resource "
            "such as nvidia.com/gpu",
            ".resource",
        ),
    )


GANG_SCHEDULERS = {"volcano": "volcano", "coscheduling": "scheduler-plugins-scheduler"}
"""Gang scheduler -> the schedulerName its pods get by default (scheduler-plugins' is the
name its Helm chart gives the second scheduler)."""


class GangScheduling(ApiModel):
    """All-or-nothing placement of an attempt's pods: each attempt gets a PodGroup (of
    Volcano or of scheduler-plugins' coscheduling) with minMember = nodes, and its pods that
    scheduler's name, so no pod of a gang binds until all of them fit."""

    scheduler: Literal["volcano", "coscheduling"]
    """`volcano` (PodGroup scheduling.volcano.sh/v1beta1, schedulerName `volcano`) or
    `coscheduling` (scheduler-plugins' PodGroup scheduling.x-k8s.io/v1alpha1, schedulerName
    `scheduler-plugins-scheduler`); podTemplate.schedulerName names another scheduler
    instance (e.g. `default-scheduler` where scheduler-plugins replaced it)."""
    schedule_timeout_seconds: int | None = Field(default=None, ge=1, le=2_147_483_647)
    """coscheduling only: how long the gang may wait to be placed whole before the scheduler
    rejects it and tries again (the PodGroup's scheduleTimeoutSeconds; its default is 60)."""
    queue: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """volcano only: the Volcano Queue the PodGroup is admitted from; unset is Volcano's
    `default` queue."""

    cel_rules = (
        CelRule(
            "!has(self.scheduleTimeoutSeconds) || self.scheduler == 'coscheduling'",
            "scheduleTimeoutSeconds is a coscheduling PodGroup setting; Volcano's PodGroup "
            "has none",
            ".scheduleTimeoutSeconds",
        ),
        CelRule(
            "!has(self.queue) || self.scheduler == 'volcano'",
            "queue is a Volcano setting; with coscheduling leave it unset",
            ".queue",
        ),
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, so pods can land on tainted (e.g. GPU) nodes."""

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key to tolerate; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Equal` matches key and value; `Exists` matches the key alone."""
    value: Annotated[str, Field(max_length=253)] | None = None
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


RESERVED_ENV_PREFIXES = ("TRADEWIND_", "PET_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (
    "RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)  # fmt: skip
"""Environment the operator gives a run's pods: a user's value would take its place (the
last of duplicate names wins), moving the rendezvous, the checkpoints or the MLflow run."""


class EnvVar(ApiModel):
    """An environment variable for the training container."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    ]
    """Variable name."""
    value: LongStr | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = None
    """A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."""

    cel_rules = (
        CelRule("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"),
        CelRule(
            f"!(self.name in {list(RESERVED_ENV_NAMES)}) && "
            + " && ".join(f"!self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES),
            "name is set by the operator (torchrun's rendezvous, the object store, MLflow: "
            f"{', '.join(f'{p}*' for p in RESERVED_ENV_PREFIXES)}, "
            f"{', '.join(RESERVED_ENV_NAMES)}); use another name",
            ".name",
        ),
    )


class VolumeMount(ApiModel):
    """Where a volume appears in the training container."""

    name: DNSLabel
    """Name of a volume in `podTemplate.volumes`."""
    mount_path: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^/")]
    """Absolute path in the container; not one of the operator's (/etc/tradewind and
    /var/tmp/tradewind and what is under them, /dev/shm, /tmp, /home/tradewind)."""
    read_only: bool = False
    """Mount read-only."""
    sub_path: Annotated[str, Field(max_length=1024)] | None = None
    """Sub-path of the volume to mount instead of its root."""


class Volume(ApiModel):
    """A Kubernetes volume (any volume source: persistentVolumeClaim, secret, configMap, ...).

    Only `name` is checked here; the rest is passed to the pod as written and checked by the
    apiserver when the Job is created."""

    model_config = ConfigDict(extra="allow")
    name: DNSLabel
    """Volume name, referenced by `volumeMounts`; not one of the operator's (config, dshm,
    state, tmp, home)."""


class Container(ApiModel):
    """A Kubernetes Container (image, command, args, env, envFrom, ports, resources,
    volumeMounts, securityContext, probes, ...).

    Only `name` and `image` are checked here; the rest is passed to the pod as written and
    checked by the apiserver when the Job is created. It may mount the pod's volumes, the
    operator's (`config`, `state`, `tmp`, `home`, `dshm`) included."""

    model_config = ConfigDict(extra="allow")
    name: DNSLabel
    """Container name, unique in the pod; not `trainer` (the operator's)."""
    image: Annotated[str, Field(min_length=1, max_length=1024)]
    """Container image."""


class PodResourceClaim(ApiModel):
    """A pod-level dynamic resource allocation (DRA) claim: `resourceClaimName` (an existing
    ResourceClaim) or `resourceClaimTemplateName` (one claim per pod), passed through."""

    model_config = ConfigDict(extra="allow")
    name: DNSLabel
    """The claim's name in the pod; the trainer container's resources.claims names it."""


class LocalObjectReference(ApiModel):
    """An object of the run's namespace, by name."""

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ]
    """Its name."""


def _mount_rule() -> CelRule:
    exact = [p for path in OPERATOR_PATHS for p in (path, f"{path}/")]
    trees = " && ".join(f"!m.mountPath.startsWith('{t}/')" for t in OPERATOR_TREES)
    return CelRule(
        f"self.volumeMounts.all(m, !(m.mountPath in {exact}) && {trees})",
        "volumeMounts[].mountPath is one of the operator's paths "
        f"({', '.join(OPERATOR_PATHS)}; nothing under {' or '.join(OPERATOR_TREES)}): "
        "mount your volume elsewhere, e.g. /data",
        ".volumeMounts",
    )


def _owned_rules() -> tuple[CelRule, ...]:
    return tuple(
        CelRule(f"!has(self.{field})", f"{field} is the operator's: {why}", f".{field}")
        for field, why in OPERATOR_OWNED.items()
    )


class PodTemplateOverride(ApiModel):
    """A patch over the pod the operator builds for each node: what is set here is added
    (labels, annotations, env, volumes, init containers, sidecars, ...) or set (scheduling,
    networking, security contexts merged key by key). The fields the operator owns (the
    trainer container, restartPolicy, hostname, subdomain, setHostnameAsFQDN,
    activeDeadlineSeconds) are refused with what to use instead."""

    labels: dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]] = (
        Field(default_factory=dict, max_length=64)
    )
    """Extra pod labels (the operator's own labels win)."""
    annotations: dict[Annotated[str, Field(max_length=316)], LongStr] = Field(
        default_factory=dict, max_length=64
    )
    """Extra pod annotations."""
    node_selector: dict[
        Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=63)]
    ] = Field(default_factory=dict, max_length=32)
    """Node labels the pods must match, e.g. `{tradewind.dev/gpu-pool: a100}`."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate."""
    affinity: dict[str, Any] | None = None
    """A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity), passed through."""
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    """Kubernetes TopologySpreadConstraints (maxSkew, topologyKey, whenUnsatisfiable,
    labelSelector, ...), passed through; select the run's pods with the label
    `tradewind.dev/run: <name>`."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """PriorityClass of the pods (and of a gang's PodGroup)."""
    scheduler_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """The scheduler that places the pods; defaults to the gang scheduler's
    (spec.gangScheduling) or the cluster's default scheduler."""
    runtime_class_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """RuntimeClass of the pods, e.g. `nvidia` where the NVIDIA container runtime is not the
    node's default, or a sandboxed runtime."""
    service_account_name: Annotated[str, Field(max_length=253)] | None = None
    """ServiceAccount the pods run as; defaults to the namespace's `default`."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets (docker-registry) of the run's namespace to pull a private image with, after
    the operator's own (TRADEWIND_IMAGE_PULL_SECRETS, the chart's `imagePullSecrets`)."""
    security_context: dict[str, Any] | None = None
    """A Kubernetes PodSecurityContext merged over the operator's (runAsNonRoot, runAsUser,
    runAsGroup and fsGroup 10001, seccompProfile RuntimeDefault): nested objects key by key,
    your values win, lists are replaced, e.g. `{fsGroup: 2000, supplementalGroups: [44]}`.
    Loosening it is yours to decide; a namespace enforcing PodSecurity `restricted` then
    refuses the pods (the run shows PodsRefused)."""
    container_security_context: dict[str, Any] | None = None
    """A Kubernetes SecurityContext merged over the trainer container's
    (allowPrivilegeEscalation false, capabilities drop ALL, readOnlyRootFilesystem true)
    the same way, e.g. `{capabilities: {add: [IPC_LOCK]}}` for RDMA."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables for the training container."""
    env_from: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    """Kubernetes EnvFromSources (configMapRef, secretRef, prefix) for the training
    container, passed through; a variable of `env` or of the operator (its rendezvous,
    object store and MLflow variables) takes precedence over one of the same name here."""
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    """Extra pod volumes."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    """Extra mounts in the training container; each must name a volume above."""
    init_containers: list[Container] = Field(default_factory=list, max_length=16)
    """Containers that run to completion, in order, before the trainer starts (e.g. to fetch
    data onto a volume). Like sidecars, each runs under the pod's security context and gets
    allowPrivilegeEscalation false and capabilities drop ALL under its own securityContext
    (what PodSecurity `restricted` asks of a container); its root filesystem is writable."""
    sidecars: list[Container] = Field(default_factory=list, max_length=16)
    """Containers that run beside the trainer for the pod's whole life (e.g. a log shipper
    or a metrics exporter), as Kubernetes native sidecars (init containers with
    restartPolicy Always, after the ones above): started before the trainer, stopped when it
    ends, so a finished trainer still completes its pod. Needs Kubernetes 1.29 or later."""
    resource_claims: list[PodResourceClaim] = Field(default_factory=list, max_length=8)
    """Dynamic resource allocation (DRA) claims of the pod; the trainer container gets each
    one (its resources.claims)."""
    host_network: bool | None = None
    """Use the node's network namespace (e.g. for RDMA or NCCL over the host's interfaces);
    dnsPolicy then defaults to ClusterFirstWithHostNet, so the rendezvous name still
    resolves. Refused by PodSecurity `baseline` and `restricted`."""
    host_ipc: bool | None = Field(default=None, alias="hostIPC")
    """Use the node's IPC namespace (e.g. shared memory with a host process). Refused by
    PodSecurity `baseline` and `restricted`."""
    dns_policy: Literal["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"] | None = None
    """The pods' DNS policy; keep it resolving cluster names (ClusterFirst...) or give a
    dnsConfig that does: torchrun finds rank 0 by its Service name."""
    dns_config: dict[str, Any] | None = None
    """A Kubernetes PodDNSConfig (nameservers, searches, options), passed through."""
    host_aliases: list[dict[str, Any]] = Field(default_factory=list, max_length=32)
    """Kubernetes HostAliases (ip, hostnames): extra /etc/hosts entries."""
    termination_grace_period_seconds: int | None = Field(default=None, ge=0, le=86_400)
    """How long the trainer has to stop (e.g. save a checkpoint) after SIGTERM before it is
    killed; Kubernetes' default is 30."""
    enable_service_links: bool | None = None
    """Whether the pods get environment variables for the namespace's Services (Kubernetes'
    default: true)."""
    share_process_namespace: bool | None = None
    """One process namespace for the pod's containers (a sidecar can see the trainer's
    processes)."""

    # The operator's: declared (with their Kubernetes types, so CEL sees them) only to be
    # refused with a clear message (OPERATOR_OWNED).
    containers: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    """Refused: the trainer container is the operator's."""
    restart_policy: Annotated[str, Field(max_length=63)] | None = None
    """Refused: the operator restarts failed attempts (spec.maxRestarts)."""
    hostname: Annotated[str, Field(max_length=63)] | None = None
    """Refused: the pods' names are the operator's (torchrun's rendezvous)."""
    subdomain: Annotated[str, Field(max_length=253)] | None = None
    """Refused: the pods' subdomain is the run's headless Service."""
    set_hostname_as_fqdn: bool | None = Field(default=None, alias="setHostnameAsFQDN")
    """Refused: the pods' names are the operator's (torchrun's rendezvous)."""
    active_deadline_seconds: int | None = None
    """Refused: use spec.activeDeadlineSeconds."""

    cel_rules = (
        *_owned_rules(),
        CelRule(
            "self.volumeMounts.all(m, self.volumes.exists(v, v.name == m.name))",
            "every volumeMounts[].name must name an entry of volumes",
            ".volumeMounts",
        ),
        CelRule(
            "self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
            "volume names must be unique",
            ".volumes",
        ),
        CelRule(
            f"self.volumes.all(v, !(v.name in {list(OPERATOR_VOLUMES)}))",
            f"volumes[].name is one of the operator's volumes ({', '.join(OPERATOR_VOLUMES)}); "
            "use another name",
            ".volumes",
        ),
        _mount_rule(),
        CelRule(
            f"self.initContainers.all(c, c.name != '{TRAINER_CONTAINER}')",
            f"initContainers[].name {TRAINER_CONTAINER} is the operator's training container; "
            "use another name",
            ".initContainers",
        ),
        CelRule(
            f"self.sidecars.all(c, c.name != '{TRAINER_CONTAINER}')",
            f"sidecars[].name {TRAINER_CONTAINER} is the operator's training container; "
            "use another name",
            ".sidecars",
        ),
        CelRule(
            "self.initContainers.all(c, self.initContainers.exists_one(d, d.name == c.name)) "
            "&& self.sidecars.all(c, self.sidecars.exists_one(d, d.name == c.name)) "
            "&& self.sidecars.all(c, !self.initContainers.exists(d, d.name == c.name))",
            "container names must be unique across initContainers and sidecars",
            ".sidecars",
        ),
        CelRule(
            "self.resourceClaims.all(c, self.resourceClaims.exists_one(d, d.name == c.name))",
            "resourceClaims names must be unique",
            ".resourceClaims",
        ),
    )
