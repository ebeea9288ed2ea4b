"""Pure builders: a run and its attempt -> the ConfigMap, headless Service and Indexed Job.

No API calls here; `reconcile` applies what these return. Names are deterministic (kind, run
name and attempt: `_attempt_stem`), so re-running a reconcile never creates anything twice.
"""

from __future__ import annotations

from typing import Any

import yaml

from tradewind.api import GROUP, RLRun, TrainingRun
from tradewind.api.identity import PARENT_RUN_ANNOTATION
from tradewind.operator import pod_security
from tradewind.operator.pod_security import STATE_DIR as STATE_DIR
from tradewind.operator.settings import OperatorSettings

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


def _attempt_stem(run: Run, attempt: int) -> str:
    """`<name>-<attempt>` for a TrainingRun, `<name>-rl<attempt>` for an RLRun.

    Child names are a function of (kind, name, attempt) with no two alike, so a TrainingRun
    and an RLRun of one name run side by side: split a stem at its last '-': a TrainingRun's
    last part is all digits, an RLRun's is `rl` and digits. Every child name is a stem and a
    fixed suffix (none for the Job, `-combine`, `-config`). Run names are at most 40
    characters (`Resource.max_name_length`) and attempts at most 101, so the longest,
    `<name>-rl101-combine` plus the pod index, stays within Kubernetes' 63-character labels
    and hostnames."""
    tag = "rl" if isinstance(run, RLRun) else ""
    return f"{run.metadata.name}-{tag}{attempt}"


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
    code) for a TrainingRun; the RL trainer (one agent per completion index) for an RLRun."""
    nodes, procs = shape(run)
    if isinstance(run, RLRun):
        config = f"{CONFIG_DIR}/run.yaml"
        command = ["python", "-m", "tradewind.trainer.rl", "--config", config]
        return [*command, "--agent-index", "$(PET_NODE_RANK)", "--state-dir", STATE_DIR]
    return [
        *TORCHRUN,
        f"--nnodes={nodes}",
        f"--nproc-per-node={procs}",
        "--node-rank=$(PET_NODE_RANK)",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_endpoint(run, attempt)}",
        f"--rdzv-id={uid}-{attempt}",
        "-m",
        "tradewind.trainer",
        "--config",
        f"{CONFIG_DIR}/run.yaml",
        "--state-dir",
        STATE_DIR,
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


def _resources(run: Run) -> Manifest:
    spec = run.spec
    requests = {k: str(v) for k, v in spec.resources.requests.items()}
    limits = {k: str(v) for k, v in spec.resources.limits.items()}
    if spec.device == "cuda":
        _, procs = shape(run)
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(procs)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def build_job(
    run: Run, attempt: int, uid: str, owner: Manifest, settings: OperatorSettings
) -> Manifest:
    """The Indexed Job of one attempt: completions = parallelism = nodes, no Job-level
    retries (the operator restarts the whole gang from the latest checkpoint)."""
    nodes, _ = shape(run)
    spec, template = run.spec, run.spec.pod_template
    pod_labels = {**template.labels, **labels(run, attempt, "train")}
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
        "securityContext": pod_security.container_security_context(),
    }
    if resources := _resources(run):
        container["resources"] = resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "subdomain": service_name(run),
        "securityContext": pod_security.pod_security_context(),
        # The token only for a run that names its ServiceAccount (it then wants the API).
        "automountServiceAccountToken": template.service_account_name is not None,
        "containers": [container],
        "volumes": volumes,
    }
    optional = {
        "nodeSelector": template.node_selector or None,
        "tolerations": [
            t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations
        ]
        or None,
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
        "serviceAccountName": template.service_account_name,
        "imagePullSecrets": [
            {"name": name}
            for name in dict.fromkeys(
                [*settings.image_pull_secrets, *(s.name for s in template.image_pull_secrets)]
            )
        ],
    }
    pod_spec |= {k: v for k, v in optional.items() if v}
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
            "suspend": spec.suspend,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(template.annotations)},
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
    (container,) = template["spec"]["containers"]
    config = f"{CONFIG_DIR}/run.yaml"
    container["command"] = ["python", "-m", "tradewind.trainer.rl", "--config", config, "--combine"]
    container["command"] += ["--state-dir", STATE_DIR]
    return job
