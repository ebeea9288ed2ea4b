"""Pure builders: a run and its attempt -> the ConfigMap, headless Service and Indexed Job.

No API calls here; `reconcile` applies what these return. Names are deterministic (kind, run
name and attempt: `_attempt_stem`), so re-running a reconcile never creates anything twice.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from tradewind.api import GROUP, RLRun, TrainingRun
from tradewind.api.identity import PARENT_RUN_ANNOTATION
from tradewind.api.pods import GANG_SCHEDULERS, Container, PodTemplateOverride
from tradewind.operator import pod_security
from tradewind.operator.pod_security import STATE_DIR as STATE_DIR
from tradewind.operator.settings import OperatorSettings
from tradewind.trainer import own_code

Run = TrainingRun | RLRun
Manifest = dict[str, Any]

RUN_LABEL = f"{GROUP}/run"
KIND_LABEL = f"{GROUP}/kind"
RUN_UID_LABEL = f"{GROUP}/run-uid"
ATTEMPT_LABEL = f"{GROUP}/attempt"
ROLE_LABEL = f"{GROUP}/role"
"""`train` for the Job that trains, `combine` for an RLRun ensemble's evaluation step."""
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RDZV_PORT = 29400
CONFIG_DIR = "/etc/tradewind"
CONTAINER = "trainer"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


STEM_MAX = 53
"""The longest attempt stem: `<stem>-combine` and a pod index (`-0`), or `<stem>` and the
highest index (`-255`), stay within the 63 characters of a pod hostname and a label value."""


def _attempt_stem(run: Run, attempt: int) -> str:
    """`<name>-<attempt>` for a TrainingRun, `<name>-rl<attempt>` for an RLRun.

    Child names are a function of (kind, name, attempt) with no two alike, so a TrainingRun
    and an RLRun of one name run side by side: split a stem at its last '-': a TrainingRun's
    last part is all digits, an RLRun's is `rl` and digits. Every child name is a stem and a
    fixed suffix (none for the Job, `-combine`, `-config`). A stem longer than STEM_MAX (run
    names may be 63 characters, attempts have no bound) keeps the start of the name and a
    hash of all of it: `<name prefix>-<8 hex>-<attempt>`."""
    tag = "rl" if isinstance(run, RLRun) else ""
    name, suffix = run.metadata.name, f"-{tag}{attempt}"
    if len(name) + len(suffix) > STEM_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: STEM_MAX - len(suffix) - 9].rstrip('-')}-{digest}"
    return name + suffix


def job_name(run: Run, attempt: int) -> str:
    return _attempt_stem(run, attempt)


def service_name(run: Run) -> str:
    """The headless Service (and the pods' subdomain). Only TrainingRuns get one: RLRun pods
    train alone and talk to nobody, and a Service name of the run's own name leaves no room
    for the kind."""
    return run.metadata.name


def needs_service(run: Run) -> bool:
    """torchrun's rendezvous needs rank 0's DNS name: TrainingRuns."""
    return isinstance(run, TrainingRun)


def combine_job_name(run: Run, attempt: int) -> str:
    return f"{_attempt_stem(run, attempt)}-combine"


def needs_combine(run: Run) -> bool:
    """An RLRun ensemble evaluates its trained agents together in a last step."""
    return isinstance(run, RLRun) and run.spec.ensemble is not None


def config_name(run: Run, attempt: int) -> str:
    """`<stem>-config-<run uid>`: the uid makes a ConfigMap that exists under this name this
    run's own, with no read of it (the operator may not read ConfigMaps), never an earlier
    run's of the same name with that run's spec (ConfigMap names may be 253 long)."""
    uid = run_uid(run)
    return f"{_attempt_stem(run, attempt)}-config" + (f"-{uid}" if uid else "")


def run_uid(run: Run) -> str | None:
    """The run's uid, when the model was parsed from the cluster's object (metadata.uid is
    kept as an extra field: reconcile.PARSED_METADATA)."""
    uid = (run.metadata.model_extra or {}).get("uid")
    return str(uid) if uid else None


def owner_reference(run_body: Manifest) -> Manifest:
    """The controller reference children carry, so deleting the run deletes them."""
    meta = run_body["metadata"]
    return {
        "apiVersion": run_body["apiVersion"],
        "kind": run_body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(run: Run, attempt: int | None = None, role: str | None = None) -> dict[str, str]:
    """The labels of every child and pod: run name, kind and uid (children are matched to
    their run by uid: a run created again under the same name never counts its
    predecessor's), attempt and role."""
    out = {RUN_LABEL: run.metadata.name, KIND_LABEL: run.kind}
    if uid := run_uid(run):
        out[RUN_UID_LABEL] = uid
    if attempt is not None:
        out[ATTEMPT_LABEL] = str(attempt)
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def build_configmap(run: Run, attempt: int, owner: Manifest) -> Manifest:
    """The run as the trainer reads it (`--config /etc/tradewind/run.yaml`)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_name(run, attempt),
            "namespace": run.metadata.namespace,
            "labels": labels(run, attempt),
            "ownerReferences": [owner],
        },
        "data": {"run.yaml": _manifest_without_status(run)},
    }


def _manifest_without_status(run: Run) -> str:
    """The run as written, without status and with only name, namespace, labels and the
    MLflow parent-run annotation of its metadata (not kubectl's copy of the whole manifest):
    one dump (libyaml's C emitter where the yaml package has it)."""
    doc = run.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    doc.pop("status", None)
    meta = doc["metadata"]
    doc["metadata"] = {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}
    if parent := (meta.get("annotations") or {}).get(PARENT_RUN_ANNOTATION):
        doc["metadata"]["annotations"] = {PARENT_RUN_ANNOTATION: parent}
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=False)


_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def build_service(run: Run, owner: Manifest) -> Manifest:
    """Headless Service: stable DNS for every pod (`<job>-<index>.<service>`), also before
    the pods are ready, so rank 0's rendezvous endpoint resolves at once."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(run),
            "namespace": run.metadata.namespace,
            "labels": labels(run),
            "ownerReferences": [owner],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(run),  # the run's own pods: by kind and uid too
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}],
        },
    }


def rendezvous_endpoint(run: Run, attempt: int) -> str:
    return f"{job_name(run, attempt)}-0.{service_name(run)}:{RDZV_PORT}"


def shape(run: Run) -> tuple[int, int]:
    """(nodes, processes per node) of an attempt. An RLRun trains each agent in its own pod."""
    if isinstance(run, TrainingRun):
        return run.spec.nodes, run.spec.procs_per_node
    return len(run.spec.agents), 1


TORCHRUN = ("python", "-m", "tradewind.trainer.launch")
"""torchrun, exiting with the failed rank's own exit code (see tradewind/trainer/launch.py)."""


def trainer_command(run: Run, attempt: int, uid: str) -> list[str]:
    """torchrun (through `tradewind.trainer.launch`, which keeps a rank's permanent exit
    code) for a TrainingRun; the RL trainer (one agent per completion index) for an RLRun.
    A TrainingRun's own code (`entrypoint`) runs under `tradewind.trainer.own_code`, the
    checkpoint and MLflow contract, with the same torchrun flags, or alone (launcher none)."""
    if isinstance(run, RLRun):
        config = f"{CONFIG_DIR}/run.yaml"
        command = ["python", "-m", "tradewind.trainer.rl", "--config", config]
        return [*command, "--agent-index", "$(PET_NODE_RANK)", "--state-dir", STATE_DIR]
    if run.spec.entrypoint is not None:
        child = own_code.child_argv(run.spec.entrypoint, _torchrun_flags(run, attempt, uid))
        return own_code.wrapper_argv(f"{CONFIG_DIR}/run.yaml", STATE_DIR, child)
    return [
        *TORCHRUN,
        *_torchrun_flags(run, attempt, uid),
        "-m",
        "tradewind.trainer",
        "--config",
        f"{CONFIG_DIR}/run.yaml",
        "--state-dir",
        STATE_DIR,
    ]


def _torchrun_flags(run: Run, attempt: int, uid: str) -> list[str]:
    nodes, procs = shape(run)
    return [
        f"--nnodes={nodes}",
        f"--nproc-per-node={procs}",
        "--node-rank=$(PET_NODE_RANK)",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_endpoint(run, attempt)}",
        f"--rdzv-id={uid}-{attempt}",
    ]


def trainer_env(run: Run, attempt: int, uid: str, settings: OperatorSettings) -> list[Manifest]:
    """torchrun's PET_* variables and the MASTER_ADDR family (Kubeflow's names), the
    object store and MLflow endpoints, credentials by Secret reference, then the user's."""
    nodes, procs = shape(run)
    master = f"{job_name(run, attempt)}-0.{service_name(run)}"
    index = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
    env: list[Manifest] = [
        {"name": "PET_NODE_RANK", **index},
        {"name": "RANK", **index},
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
        {"name": "WORLD_SIZE", "value": str(nodes * procs)},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(RDZV_PORT)},
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(RDZV_PORT)},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": rendezvous_endpoint(run, attempt)},
        {"name": "PET_RDZV_ID", "value": f"{uid}-{attempt}"},
        {"name": "TRADEWIND_RUN_UID", "value": uid},
        {"name": "TRADEWIND_ATTEMPT", "value": str(attempt)},
        {"name": "TRADEWIND_STATE_DIR", "value": STATE_DIR},
        {"name": "TRADEWIND_CHECKPOINT_URI", "value": f"s3://{settings.checkpoint_bucket}"},
    ]
    entrypoint = run.spec.entrypoint if isinstance(run, TrainingRun) else None
    if entrypoint is not None and entrypoint.launcher == "none":  # no torchrun to set them
        env += [{"name": "LOCAL_RANK", "value": "0"}, {"name": "LOCAL_WORLD_SIZE", "value": "1"}]
    if settings.s3_endpoint:
        env += [{"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint}]
    if settings.s3_credentials_secret:
        env += _secret_env(
            settings.s3_credentials_secret, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        )
    if settings.mlflow_tracking_uri:
        env += [{"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_tracking_uri}]
    if settings.mlflow_credentials_secret:
        keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        env += _secret_env(settings.mlflow_credentials_secret, keys)
    user = [e.model_dump(by_alias=True, exclude_none=True) for e in run.spec.pod_template.env]
    return env + user


def _secret_env(secret: str, keys: tuple[str, ...]) -> list[Manifest]:
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in keys]


DEFAULT_GPU = "nvidia.com/gpu"
"""The accelerator of `device: cuda` without `spec.accelerator`."""


def accelerator(run: Run) -> tuple[str, int] | None:
    """(extended resource, devices per pod) of a run's pods, if any: `spec.accelerator`
    (perNode defaulting to procsPerNode, or 1 per RLRun agent's pod), else nvidia.com/gpu x
    procsPerNode for device cuda."""
    spec, (_, procs) = run.spec, shape(run)
    if spec.accelerator is not None:
        return spec.accelerator.resource, spec.accelerator.per_node or procs
    return (DEFAULT_GPU, procs) if spec.device == "cuda" else None


def _resources(run: Run) -> Manifest:
    spec = run.spec
    requests = {k: str(v) for k, v in spec.resources.requests.items()}
    limits = {k: str(v) for k, v in spec.resources.limits.items()}
    if devices := accelerator(run):
        resource, count = devices
        limits[resource] = requests[resource] = str(count)
    out: Manifest = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if claims := spec.pod_template.resource_claims:
        out["claims"] = [{"name": c.name} for c in claims]
    return out


VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
"""Volcano's pod annotation naming the pod's PodGroup."""
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
"""scheduler-plugins' (coscheduling) pod label naming the pod's PodGroup."""
POD_GROUP_API = {
    "volcano": "scheduling.volcano.sh/v1beta1",
    "coscheduling": "scheduling.x-k8s.io/v1alpha1",
}


def pod_group_resource(run: Run) -> str | None:
    """The Kube collection key of the run's PodGroups (`PodGroup.<api group>`), if the run
    is gang-scheduled."""
    gang = run.spec.gang_scheduling
    return None if gang is None else f"PodGroup.{POD_GROUP_API[gang.scheduler].split('/')[0]}"


def build_pod_group(run: Run, attempt: int, owner: Manifest) -> Manifest | None:
    """The attempt's PodGroup (named as its Job, minMember = nodes), if the run is
    gang-scheduled: created before the Job, so no pod of the gang binds before it exists."""
    gang = run.spec.gang_scheduling
    if gang is None:
        return None
    nodes, _ = shape(run)
    spec: Manifest = {"minMember": nodes}
    if gang.scheduler == "volcano":
        if gang.queue:
            spec["queue"] = gang.queue
        if priority := run.spec.pod_template.priority_class_name:
            spec["priorityClassName"] = priority
    elif gang.schedule_timeout_seconds is not None:
        spec["scheduleTimeoutSeconds"] = gang.schedule_timeout_seconds
    return {
        "apiVersion": POD_GROUP_API[gang.scheduler],
        "kind": "PodGroup",
        "metadata": {
            "name": job_name(run, attempt),
            "namespace": run.metadata.namespace,
            "labels": labels(run, attempt, "train"),
            "ownerReferences": [owner],
        },
        "spec": spec,
    }


def _pod_group_membership(run: Run, attempt: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that put a training pod in its attempt's PodGroup."""
    gang = run.spec.gang_scheduling
    if gang is None:
        return {}, {}
    if gang.scheduler == "volcano":
        return {}, {VOLCANO_GROUP_ANNOTATION: job_name(run, attempt)}
    return {COSCHEDULING_GROUP_LABEL: job_name(run, attempt)}, {}


def _scheduler_name(run: Run) -> str | None:
    gang = run.spec.gang_scheduling
    default = GANG_SCHEDULERS[gang.scheduler] if gang is not None else None
    return run.spec.pod_template.scheduler_name or default


def _init_containers(template: PodTemplateOverride) -> list[Manifest]:
    """The run's init containers, then its sidecars as native sidecars (init containers
    that restart Always: they start before the trainer and stop when it ends), each with
    what PodSecurity `restricted` asks of a container under its own security context."""

    def container(c: Container) -> Manifest:
        out = c.model_dump(by_alias=True, exclude_none=True)
        context = pod_security.extra_container_security_context(out.get("securityContext"))
        return out | {"securityContext": context}

    init = [container(c) for c in template.init_containers]
    return init + [container(c) | {"restartPolicy": "Always"} for c in template.sidecars]


def _pod_fields(template: PodTemplateOverride) -> Manifest:
    """The podTemplate fields set as written (a false value too), unset ones left out."""
    dns_policy = template.dns_policy
    if dns_policy is None and template.host_network:
        dns_policy = "ClusterFirstWithHostNet"  # the rendezvous name must still resolve
    fields = {
        "topologySpreadConstraints": template.topology_spread_constraints or None,
        "runtimeClassName": template.runtime_class_name,
        "hostNetwork": template.host_network,
        "hostIPC": template.host_ipc,
        "dnsPolicy": dns_policy,
        "dnsConfig": template.dns_config,
        "hostAliases": template.host_aliases or None,
        "resourceClaims": [
            c.model_dump(by_alias=True, exclude_none=True) for c in template.resource_claims
        ]
        or None,
        "terminationGracePeriodSeconds": template.termination_grace_period_seconds,
        "enableServiceLinks": template.enable_service_links,
        "shareProcessNamespace": template.share_process_namespace,
    }
    return {k: v for k, v in fields.items() if v is not None}


def build_job(
    run: Run, attempt: int, uid: str, owner: Manifest, settings: OperatorSettings
) -> Manifest:
    """The Indexed Job of one attempt: completions = parallelism = nodes, no Job-level
    retries (the operator restarts the whole gang from the latest checkpoint)."""
    nodes, _ = shape(run)
    spec, template = run.spec, run.spec.pod_template
    group_labels, group_annotations = _pod_group_membership(run, attempt)
    pod_labels = {**template.labels, **labels(run, attempt, "train"), **group_labels}
    pod_annotations = {**template.annotations, **group_annotations}
    job_labels = labels(run, attempt, "train")
    if QUEUE_LABEL in (run.metadata.labels or {}):
        job_labels[QUEUE_LABEL] = run.metadata.labels[QUEUE_LABEL]
    volumes = [
        {"name": "config", "configMap": {"name": config_name(run, attempt)}},
        *pod_security.scratch_volumes(run),
        *[v.model_dump(by_alias=True, exclude_none=True) for v in template.volumes],
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        *pod_security.scratch_mounts(),
        *[m.model_dump(by_alias=True, exclude_none=True) for m in template.volume_mounts],
    ]
    container: Manifest = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "command": trainer_command(run, attempt, uid),
        # HOME and LOGNAME first: a user's own value still wins (the last duplicate does).
        "env": [*pod_security.scratch_env(), *trainer_env(run, attempt, uid, settings)],
        "volumeMounts": mounts,
        "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
        "securityContext": pod_security.container_security_context(
            template.container_security_context
        ),
    }
    if template.env_from:
        container["envFrom"] = template.env_from
    if resources := _resources(run):
        container["resources"] = resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "subdomain": service_name(run),
        "securityContext": pod_security.pod_security_context(template.security_context),
        # The token only for a run that names its ServiceAccount (it then wants the API).
        "automountServiceAccountToken": template.service_account_name is not None,
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers := _init_containers(template):
        pod_spec["initContainers"] = init_containers
    optional = {
        "nodeSelector": template.node_selector or None,
        "tolerations": [
            t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations
        ]
        or None,
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
        "schedulerName": _scheduler_name(run),
        "serviceAccountName": template.service_account_name,
        "imagePullSecrets": [
            {"name": name}
            for name in dict.fromkeys(
                [*settings.image_pull_secrets, *(s.name for s in template.image_pull_secrets)]
            )
        ],
    }
    pod_spec |= {k: v for k, v in optional.items() if v} | _pod_fields(template)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(run, attempt),
            "namespace": run.metadata.namespace,
            "labels": job_labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            # A queued run's Job waits, suspended, for Kueue to admit it (as Kueue's webhook
            # would make it; its controller admits Jobs created so without the webhook).
            "suspend": spec.suspend or QUEUE_LABEL in job_labels,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def build_combine_job(
    run: Run, attempt: int, uid: str, owner: Manifest, settings: OperatorSettings
) -> Manifest:
    """The RLRun ensemble's last step: one pod that loads every agent of the attempt,
    combines them and evaluates the ensemble against each member and buy-and-hold."""
    job = build_job(run, attempt, uid, owner, settings)
    job["metadata"]["name"] = combine_job_name(run, attempt)
    job["metadata"]["labels"][ROLE_LABEL] = "combine"
    job["spec"] |= {"completions": 1, "parallelism": 1}
    template = job["spec"]["template"]
    template["metadata"]["labels"][ROLE_LABEL] = "combine"
    template["spec"].pop("subdomain", None)
    # One pod after the gang: not a member of the training pods' PodGroup (minMember nodes).
    template["metadata"]["labels"].pop(COSCHEDULING_GROUP_LABEL, None)
    template["metadata"]["annotations"].pop(VOLCANO_GROUP_ANNOTATION, None)
    (container,) = template["spec"]["containers"]
    config = f"{CONFIG_DIR}/run.yaml"
    container["command"] = ["python", "-m", "tradewind.trainer.rl", "--config", config, "--combine"]
    container["command"] += ["--state-dir", STATE_DIR]
    return job
