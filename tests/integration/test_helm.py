"""The Helm chart against the real control plane: lint, several value sets rendered and
validated by the apiserver (--dry-run=server), installs with the operator's service account
checked by `kubectl auth can-i`, and the real operator run with that service account's
token, so the RBAC is shown to be enough, not only narrow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tradewind.devstack import DevStack
from tradewind.devstack.kwok import HOLD_LABEL
from tradewind.operator.settings import OperatorSettings

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "tradewind"


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (the apiserver would keep one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        duplicated = {k for k in keys if keys.count(k) > 1}
        if duplicated:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {sorted(duplicated)}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


class Helm:
    def __init__(self, stack: DevStack, home: Path) -> None:
        self.binary = str(stack.bin / "helm")
        self.kubeconfig = str(stack.kubeconfig)
        self.home = home
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True, text=True, check=False, timeout=180, env=self.env,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result

    def with_values(
        self,
        command: str,
        release: str,
        namespace: str,
        values: dict[str, Any],
        *extra: str,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`helm COMMAND [RELEASE] CHART -n NAMESPACE -f VALUES ...`."""
        values_file = self.home / f"values-{uuid.uuid4().hex}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        name = [release] if release else []
        return self.run(
            command, *name, str(CHART), "-n", namespace, "-f", str(values_file), *extra,
            check=check,
        )  # fmt: skip

    def template(self, release: str, namespace: str, values: dict[str, Any]) -> list[Any]:
        out = self.with_values("template", release, namespace, values, "--include-crds")
        return [d for d in yaml.load_all(out.stdout, Loader=_StrictLoader) if d]


@pytest.fixture(scope="module")
def helm(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(stack, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def namespaces(kubectl: Kubectl) -> Iterator[list[str]]:
    """Three more fresh namespaces (the `namespace` fixture gives one)."""
    names = [f"test-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for name in names:
        kubectl.run("create", "namespace", name)
    yield names
    for name in names:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def _of(docs: list[Any], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(docs: list[Any], kind: str) -> dict[str, Any]:
    (doc,) = _of(docs, kind)
    return doc


def _value_sets(ns: str, others: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "defaults": {},
        "namespaced": {"watchNamespaces": others[:2]},
        "all-in-one": {
            "watchNamespaces": others[:1],
            "image": {"registry": "registry.example.com/ml/", "operator": {"tag": "v1"}},
            "imagePullSecrets": [{"name": "regcred"}],
            "minio": {"enabled": True, "persistence": {"enabled": True, "size": "5Gi"}},
            "mlflowServer": {"enabled": True, "persistence": {"enabled": True}},
            "operator": {
                "verbose": True,
                "logFormat": "full",
                "extraEnv": [{"name": "TZ", "value": "UTC"}],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            },
        },
        "external-services": {
            "objectStore": {
                "endpoint": "https://s3.example.com",
                "credentialsSecret": "s3-creds",
                "checkpointBucket": "models",
            },
            "mlflow": {"trackingUri": "http://mlflow.mlops:5000", "credentialsSecret": "mlf"},
            "optuna": {"storage": "postgresql://optuna@db/optuna"},
            "serviceAccount": {"create": False, "name": "default"},
            "metrics": {"service": {"enabled": False}},
        },
        "service-monitor": {
            "optuna": {"persistence": {"existingClaim": "studies"}},
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        },
    }


@pytest.mark.parametrize(
    ("values", "where"), [({}, "tw"), ({"watchNamespaces": ["team-a", "team-b"]}, "team-a")]
)
def test_the_notes_train_the_quickstart_where_the_operator_watches_and_keys_are(
    helm: Helm, values: dict[str, Any], where: str
) -> None:
    notes = helm.with_values("install", "rel", "tw", values, "--dry-run=client").stdout
    notes = notes[notes.index("NOTES:") :]
    assert f"kubectl apply -n {where} -f examples/trainingrun-quickstart.yaml" in notes
    assert f"kubectl wait -n {where} --for=condition=Succeeded trainingrun/quickstart" in notes


def test_the_chart_lints_strictly(helm: Helm) -> None:
    result = helm.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_every_value_set_lints_and_the_apiserver_accepts_what_it_renders(
    helm: Helm, kubectl: Kubectl, crds_installed: None, namespace: str, namespaces: list[str]
) -> None:
    for label, values in _value_sets(namespace, namespaces).items():
        lint = helm.with_values("lint", "", namespace, values, "--strict")
        assert "0 chart(s) failed" in lint.stdout, (label, lint.stdout)
        docs = helm.template(f"v-{label}", namespace, values)
        # The ServiceMonitor kind is the Prometheus Operator's, absent from this cluster.
        known = [d for d in docs if d["kind"] != "ServiceMonitor"]
        result = kubectl.run(
            "apply", "--dry-run=server", "--server-side", "-f", "-",
            stdin="\n---\n".join(json.dumps(d) for d in known), check=False,
        )  # fmt: skip
        assert result.returncode == 0, (label, result.stderr)
        assert len(result.stdout.splitlines()) == len(known), (label, result.stdout)


def test_rendered_objects_follow_the_values(
    helm: Helm, namespace: str, namespaces: list[str]
) -> None:
    sets = _value_sets(namespace, namespaces)
    rendered = {label: helm.template("rel", namespace, v) for label, v in sets.items()}

    for label, docs in rendered.items():
        # The operator never reads Secrets: no rule anywhere names them (or a wildcard).
        for role in _of(docs, "ClusterRole") + _of(docs, "Role"):
            for rule in role["rules"]:
                assert not {"secrets", "*"} & set(rule["resources"]), (label, rule)
                assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"], (label, rule)
        # Every TRADEWIND_* variable is an operator setting, and parses as one.
        config = _one(docs, "ConfigMap")["data"]
        fields = {f"TRADEWIND_{name.upper()}" for name in OperatorSettings.model_fields}
        assert set(config) <= fields, (label, set(config) - fields)
        mp = pytest.MonkeyPatch()
        for key, value in config.items():
            mp.setenv(key, value)
        settings = OperatorSettings()
        mp.undo()
        assert settings.trainer_image.endswith(":0.1.0") or label == "all-in-one"
        # The Deployment, hardened: with SQLite (on a ReadWriteOnce claim) one pod, replaced;
        # with a database URL two, rolled one at a time, electing a leader.
        deployment = _one(docs, "Deployment") if label != "all-in-one" else None
        if deployment:
            sqlite = not sets[label].get("optuna", {}).get("storage")
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            if sqlite:
                assert deployment["spec"]["replicas"] == 1
                assert deployment["spec"]["strategy"] == {"type": "Recreate"}
                assert {"/tmp", "/var/lib/tradewind"} <= mounts
            else:
                assert deployment["spec"]["replicas"] == 2
                assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
                assert mounts == {"/tmp"} and not _of(docs, "PersistentVolumeClaim")
                assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
            assert settings.leader_election and settings.lease_namespace == namespace
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            probe = container["livenessProbe"]["httpGet"]
            assert probe["path"] == "/healthz" and container["readinessProbe"]["httpGet"] == probe
            assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]

    default = rendered["defaults"]
    (cluster_role,) = _of(default, "ClusterRole", "rel-tradewind")
    # Namespaced: only the leader election's Lease, in the release namespace.
    (lease_role,) = _of(default, "Role")
    assert lease_role["metadata"]["namespace"] == namespace
    assert {r for rule in lease_role["rules"] for r in rule["resources"]} == {"leases"}
    assert [b["metadata"]["name"] for b in _of(default, "RoleBinding")] == [
        "rel-tradewind-leader-election"
    ]
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"trainingruns", "jobs", "pods", "configmaps", "customresourcedefinitions"} <= resources
    (container,) = _one(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    assert _one(default, "PersistentVolumeClaim")["metadata"]["name"] == "rel-tradewind-optuna"

    namespaced = rendered["namespaced"]
    roles = _of(namespaced, "Role", "rel-tradewind")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces[:2])
    bindings = _of(namespaced, "RoleBinding", "rel-tradewind")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(namespaces[:2])
    # Cluster-wide: only `get` of the watched namespaces themselves (kopf scans nothing).
    cluster_rules = _of(namespaced, "ClusterRole", "rel-tradewind")[0]["rules"]
    assert cluster_rules == [
        {
            "apiGroups": [""],
            "resources": ["namespaces"],
            "resourceNames": namespaces[:2],
            "verbs": ["get"],
        }
    ]
    (container,) = _one(namespaced, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in namespaces[:2]
    ]

    aio = rendered["all-in-one"]
    operator = _of(aio, "Deployment", "rel-tradewind")[0]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/tradewind-operator:v1"
    assert "--verbose" in container["args"] and "--json-logs" not in container["args"]
    config = _one(aio, "ConfigMap")["data"]
    assert config["TRADEWIND_TRAINER_IMAGE"] == "registry.example.com/ml/tradewind-trainer:0.1.0"
    # The chart's pull secrets reach run pods too, not just the operator's.
    assert json.loads(config["TRADEWIND_IMAGE_PULL_SECRETS"]) == ["regcred"]
    assert config["TRADEWIND_S3_ENDPOINT"] == f"http://rel-tradewind-minio.{namespace}.svc:9000"
    assert config["TRADEWIND_S3_CREDENTIALS_SECRET"] == "rel-tradewind-minio-credentials"
    assert config["TRADEWIND_MLFLOW_TRACKING_URI"] == (
        f"http://rel-tradewind-mlflow.{namespace}.svc:5000"
    )
    secrets = _of(aio, "Secret", "rel-tradewind-minio-credentials")
    # The credentials are where run pods read them: the release namespace and each watched
    # one, each namespace its own (test_the_bundled_minio_gives_each_namespace_its_own_user).
    assert sorted(s["metadata"]["namespace"] for s in secrets) == sorted([namespace, namespaces[0]])
    assert len({json.dumps(s["data"], sort_keys=True) for s in secrets}) == 2
    assert {d["metadata"]["name"] for d in _of(aio, "Service")} >= {
        "rel-tradewind-minio",
        "rel-tradewind-mlflow",
    }
    # One uvicorn worker and no job runner: MLflow's defaults outgrew the 2Gi limit (OOMKilled).
    server = _of(aio, "Deployment", "rel-tradewind-mlflow")[0]["spec"]["template"]["spec"]
    (mlflow_container,) = server["containers"]
    assert "--workers=1" in mlflow_container["command"]
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in mlflow_container[
        "env"
    ]

    external = rendered["external-services"]
    config = _one(external, "ConfigMap")["data"]
    assert config["TRADEWIND_OPTUNA_STORAGE"] == "postgresql://optuna@db/optuna"
    assert config["TRADEWIND_S3_CREDENTIALS_SECRET"] == "s3-creds"
    assert config["TRADEWIND_MLFLOW_CREDENTIALS_SECRET"] == "mlf"
    # The operator reads progress with the release namespace's Secret of that name.
    (container,) = _one(external, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]} == {
        key: {"name": "mlf", "key": key, "optional": True}
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    assert not _of(external, "PersistentVolumeClaim") and not _of(external, "ServiceAccount")
    assert not _of(external, "Service")
    binding = _one(external, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "default"

    monitored = rendered["service-monitor"]
    monitor = _one(monitored, "ServiceMonitor")
    service = _one(monitored, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prom"
    volumes = _one(monitored, "Deployment")["spec"]["template"]["spec"]["volumes"]
    optuna = next(v for v in volumes if v["name"] == "optuna")
    assert optuna["persistentVolumeClaim"]["claimName"] == "studies"
    assert not _of(monitored, "PersistentVolumeClaim")


def test_the_bundled_minio_gives_each_namespace_its_own_user_and_keeps_root_home(
    helm: Helm, namespace: str, namespaces: list[str]
) -> None:
    values = {
        "watchNamespaces": namespaces[:1],
        "minio": {"enabled": True, "tenantNamespaces": namespaces[1:2]},
        "objectStore": {"checkpointBucket": "models"},
    }
    docs = helm.template("rel", namespace, values)
    tenants = [namespace, *namespaces[:2]]
    (root,) = _of(docs, "Secret", "rel-tradewind-minio-root")
    assert root["metadata"]["namespace"] == namespace
    root_user = root["data"]["MINIO_ROOT_USER"]
    (kept,) = _of(docs, "Secret", "rel-tradewind-minio-tenants")
    assert kept["metadata"]["namespace"] == namespace
    secrets = {s["metadata"]["namespace"]: s["data"] for s in _of(docs, "Secret")
               if s["metadata"]["name"] == "rel-tradewind-minio-credentials"}  # fmt: skip
    assert sorted(secrets) == sorted(tenants)
    for ns, data in secrets.items():
        # Its own keys (those the provisioner gives MinIO), never the root's.
        assert data["AWS_ACCESS_KEY_ID"] == kept["data"][f"{ns}.access-key"] != root_user
        assert data["AWS_SECRET_ACCESS_KEY"] == kept["data"][f"{ns}.secret-key"]
    assert len({d["AWS_ACCESS_KEY_ID"] for d in secrets.values()}) == len(tenants)

    # MinIO and its provisioner sidecar meet PodSecurity `restricted`; only they see the root.
    minio = _of(docs, "Deployment", "rel-tradewind-minio")[0]["spec"]["template"]["spec"]
    assert minio["securityContext"]["runAsNonRoot"] is True
    assert isinstance(minio["securityContext"]["runAsUser"], int)
    assert minio["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = {c["name"]: c for c in minio["containers"]}
    assert set(containers) == {"minio", "provisioner"}
    for container in containers.values():
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    provisioner = containers["provisioner"]
    assert provisioner["command"][:3] == ["tradewind", "store", "provision"]
    assert "--bucket=models" in provisioner["command"]
    assert {v["name"]: v["secret"]["secretName"] for v in minio["volumes"] if "secret" in v} == {
        "tenants": "rel-tradewind-minio-tenants"
    }
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for c in containers.values()
            for e in c.get("env", []) if "valueFrom" in e]  # fmt: skip
    assert set(refs) == {"rel-tradewind-minio-root"}

    # The admission policy keeps each namespace in its prefix of the values' bucket.
    policy = _one(docs, "ValidatingAdmissionPolicy")
    binding = _one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    prefixes = next(v for v in policy["spec"]["variables"] if v["name"] == "prefixes")
    assert "'s3://models/' + namespaceObject.metadata.name + '/'" in prefixes["expression"]
    assert _one(docs, "ConfigMap")["data"]["TRADEWIND_STORAGE_SCOPE"] == "true"
    unscoped = helm.template("rel", namespace, {"objectStore": {"namespaceScope": False}})
    assert not _of(unscoped, "ValidatingAdmissionPolicy")
    assert _one(unscoped, "ConfigMap")["data"]["TRADEWIND_STORAGE_SCOPE"] == "false"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces/0"),
        ({"minio": {"tenantNamespaces": ["Not_A_Namespace"]}}, "tenantNamespaces/0"),
        ({"objectStore": {"namespaceScope": "yes"}}, "namespaceScope"),
        ({"operator": {"reconcileWorkers": 0}}, "reconcileWorkers"),
        ({"operator": {"concurrentStarts": 0}}, "concurrentStarts"),
        ({"operator": {"periodicReconcilesPerSecond": 0}}, "periodicReconcilesPerSecond"),
        ({"operator": {"normalEvents": {"perSecond": 5, "burst": -1}}}, "normalEvents/burst"),
        ({"objectStore": {"endpoint": "minio:9000"}}, "endpoint"),
        ({"operatorr": {}}, "operatorr"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, ""),
    ],
)
def test_the_values_schema_rejects_mistakes(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    result = helm.with_values("template", "rel", "default", values, check=False)
    assert result.returncode != 0 and "schema" in result.stderr and message in result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": 2}}, "needs optuna.storage"),
        ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}},
          "optuna": {"storage": "postgresql://db/optuna"}}, "needs operator.leaderElection"),
        ({"operator": {"leaderElection": {"renewDeadlineSeconds": 20}}}, "renewDeadlineSeconds <"),
    ],
)  # fmt: skip
def test_the_chart_refuses_two_operators_that_could_both_work(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    result = helm.with_values("template", "rel", "default", values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize("storage", ["", "postgresql://optuna@db/optuna"])
def test_the_operator_pod_is_admitted_where_pod_security_is_restricted(
    helm: Helm, kubectl: Kubectl, namespace: str, storage: str
) -> None:
    """The operator's pod, as the Deployment would create it, in a namespace that enforces
    `restricted` (a server-side dry run: admission runs, nothing is created)."""
    kubectl.run("label", "namespace", namespace, "--overwrite",
                "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip
    docs = helm.template("rel", namespace, {"optuna": {"storage": storage}})
    template = _one(docs, "Deployment")["spec"]["template"]
    # Admission checks the pod, not whether its claim and ServiceAccount exist yet.
    spec = {**template["spec"], "serviceAccountName": "default"}
    spec["volumes"] = [{"name": v["name"], "emptyDir": {}} for v in spec["volumes"]]
    metadata = {**template["metadata"], "name": "operator-pod"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    result = kubectl.run("create", "--dry-run=server", "-n", namespace, "-f", "-",
                         stdin=json.dumps(pod), check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "violate" not in result.stderr, result.stderr


def test_the_packaged_chart_ships_the_generated_crds(
    helm: Helm, repo_root: Path, tmp_path: Path
) -> None:
    """helm/tradewind/crds links to crds/: the package holds the files themselves, byte for
    byte (what `helm install` creates, and `kubectl apply -f crds/` upgrades)."""
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("tradewind-*.tgz")
    with tarfile.open(package) as tar:
        shipped = {
            Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.name.startswith("tradewind/crds/")
        }
    generated = {p.name: p.read_bytes() for p in (repo_root / "crds").glob("*.yaml")}
    assert shipped == generated
    assert set(shipped) == {
        "trainingruns.tradewind.dev.yaml",
        "rlruns.tradewind.dev.yaml",
        "sweeps.tradewind.dev.yaml",
    }


class Release:
    """A chart release in its own namespace, uninstalled at the end."""

    def __init__(self, helm: Helm, namespace: str, values: dict[str, Any]) -> None:
        self.helm, self.namespace = helm, namespace
        self.name = f"tw-{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-tradewind"
        self.service_account = f"system:serviceaccount:{namespace}:{self.fullname}"
        self.values = values

    def __enter__(self) -> Release:
        self.helm.with_values("install", self.name, self.namespace, self.values)
        return self

    def __exit__(self, *_: object) -> None:
        self.helm.run("uninstall", self.name, "-n", self.namespace, "--wait", check=False)


def _can(kubectl: Kubectl, who: str, verb: str, resource: str, namespace: str | None) -> bool:
    """`resource` may end in `/<subresource>` (kubectl itself reads that as an object name)."""
    where = ["-n", namespace] if namespace else []
    resource, _, sub = resource.partition("/")
    where += [f"--subresource={sub}"] if sub else []
    result = kubectl.run("auth", "can-i", verb, resource, "--as", who, *where, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


NEEDED = [  # (verb, resource): what the operator does in a watched namespace
    *[(v, "trainingruns.tradewind.dev") for v in ("list", "watch", "patch", "create", "delete")],
    *[(v, "rlruns.tradewind.dev") for v in ("list", "watch", "patch", "create", "delete")],
    ("list", "sweeps.tradewind.dev"), ("watch", "sweeps.tradewind.dev"),
    ("patch", "trainingruns.tradewind.dev/status"), ("patch", "rlruns.tradewind.dev/status"),
    ("patch", "sweeps.tradewind.dev/status"),
    *[(v, "jobs.batch") for v in ("list", "watch", "create", "delete", "patch")],
    ("list", "pods"), ("watch", "pods"),
    ("create", "configmaps"), ("delete", "configmaps"), ("create", "services"),
    ("create", "events"),
    ("get", "services"), ("get", "jobs.batch"), ("list", "events"),  # owner check, FailedCreate
    # blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement)
    *[("update", f"{k}.tradewind.dev/finalizers") for k in ("trainingruns", "rlruns", "sweeps")],
]  # fmt: skip
DENIED = [  # what it must never do, in any namespace
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
    ("create", "pods"), ("delete", "pods"), ("create", "deployments.apps"),
    ("update", "configmaps"), ("get", "configmaps"), ("create", "sweeps.tradewind.dev"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "pods/exec"),
]  # fmt: skip


def _installed(kubectl: Kubectl, release: Release) -> dict[str, Any]:
    for crd in ("trainingruns", "rlruns", "sweeps"):
        kubectl.wait("--for=condition=Established", f"crd/{crd}.tradewind.dev")
    deployment: dict[str, Any] = kubectl.get(
        f"deployment/{release.fullname}", "-n", release.namespace
    )
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == release.fullname
    kubectl.get(f"serviceaccount/{release.fullname}", "-n", release.namespace)
    # kwok starts the pod on a fake node (nothing executes), so the Deployment rolls out.
    kubectl.wait("--for=condition=Available", f"deployment/{release.fullname}",
                 "-n", release.namespace, timeout=120)  # fmt: skip
    return deployment


def test_install_cluster_wide(
    helm: Helm, kubectl: Kubectl, crds_installed: None, namespace: str, namespaces: list[str]
) -> None:
    values = {"optuna": {"persistence": {"enabled": False}}}
    with Release(helm, namespace, values) as release:
        _installed(kubectl, release)
        sa = release.service_account
        for ns in (namespaces[0], namespace, "default"):
            for verb, resource in NEEDED:
                assert _can(kubectl, sa, verb, resource, ns), (verb, resource, ns)
            for verb, resource in DENIED:
                assert not _can(kubectl, sa, verb, resource, ns), (verb, resource, ns)
        assert _can(kubectl, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
        assert not _can(
            kubectl, sa, "update", "customresourcedefinitions.apiextensions.k8s.io", None
        )
        assert not _can(kubectl, sa, "list", "namespaces", None)  # clusterwide: kopf needs none
        assert not _can(kubectl, sa, "list", "nodes", None)
    # Uninstalled: the cluster-scoped RBAC goes with the release.
    gone = kubectl.run("get", f"clusterrole/{release.fullname}", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_install_for_a_list_of_namespaces(
    helm: Helm, kubectl: Kubectl, crds_installed: None, namespace: str, namespaces: list[str]
) -> None:
    watched, unwatched = namespaces[:2], namespaces[2]
    values = {
        "watchNamespaces": watched,
        "minio": {"enabled": True},
        "optuna": {"persistence": {"enabled": False}},
    }
    with Release(helm, namespace, values) as release:
        deployment = _installed(kubectl, release)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert [a for a in container["args"] if a.startswith("--namespace")] == [
            f"--namespace={n}" for n in watched
        ]
        sa = release.service_account
        for ns in watched:
            for verb, resource in NEEDED:
                assert _can(kubectl, sa, verb, resource, ns), (verb, resource, ns)
        for ns in (unwatched, namespace, "default"):
            for verb, resource in NEEDED:
                assert not _can(kubectl, sa, verb, resource, ns), (verb, resource, ns)
        for ns in (*watched, unwatched, namespace):
            for verb, resource in DENIED:
                assert not _can(kubectl, sa, verb, resource, ns), (verb, resource, ns)
        # Nothing cluster-wide but `get` of the watched namespaces: kopf scans nothing.
        assert not _can(kubectl, sa, "list", "namespaces", None)
        assert not _can(kubectl, sa, "list", "customresourcedefinitions.apiextensions.k8s.io", None)
        for ns, allowed in ((watched[0], "yes"), (unwatched, "no")):
            can = kubectl.run("auth", "can-i", "get", f"namespace/{ns}", "--as", sa, check=False)
            assert can.stdout.strip() == allowed, (ns, can.stderr)
        # The bundled MinIO's credentials are in each watched namespace, for the run pods.
        secret = f"{release.fullname}-minio-credentials"
        keys = [sorted(kubectl.get(f"secret/{secret}", "-n", ns)["data"]) for ns in watched]
        assert keys == [["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]] * 2
        kubectl.get(f"deployment/{release.fullname}-minio", "-n", namespace)
        # Each namespace's keys and the root's survive an upgrade (read back by `lookup`).
        kept = [secret, f"{release.fullname}-minio-root", f"{release.fullname}-minio-tenants"]
        where = [(name, ns) for name in kept for ns in (namespace, *watched)
                 if name == secret or ns == namespace]  # fmt: skip
        before = [kubectl.get(f"secret/{n}", "-n", ns)["data"] for n, ns in where]
        helm.with_values("upgrade", release.name, namespace, values)
        assert [kubectl.get(f"secret/{n}", "-n", ns)["data"] for n, ns in where] == before


def _token_kubeconfig(kubectl: Kubectl, release: Release, path: Path) -> Path:
    """A kubeconfig that is the operator's service account (a TokenRequest token)."""
    token = kubectl.run(
        "create", "token", release.fullname, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(kubectl.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": cluster["name"], "user": "operator"},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


def _sweep_to_the_end(kubectl: Kubectl, stack: DevStack, ns: str) -> None:
    """A one-trial Sweep: the operator lists and creates its child run, reads the child's
    val_loss (logged here, as its trainer would) and writes the Sweep's status."""
    from mlflow.tracking import MlflowClient

    template = {"training": {"epochs": 1}, "podTemplate": {"labels": {HOLD_LABEL: "true"}}}
    sweep = {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "lp-sweep", "namespace": ns},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": template},
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {"training.optimizer.learningRate": {"type": "loguniform",
                                                                "low": 1e-4, "high": 1e-2}},
            "maxTrials": 1,
            "parallelism": 1,
        },
    }  # fmt: skip
    kubectl.apply(sweep)
    kubectl.wait("--for=create", "trainingrun/lp-sweep-0", "-n", ns)
    mlflow = MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("tradewind")
    experiment_id = (
        experiment.experiment_id if experiment else mlflow.create_experiment("tradewind")
    )
    uid = kubectl.get("trainingrun/lp-sweep-0", "-n", ns)["metadata"]["uid"]
    tags = {"tradewind.name": "lp-sweep-0", "tradewind.namespace": ns, "tradewind.uid": uid}
    mlflow.log_metric(
        mlflow.create_run(experiment_id, tags=tags).info.run_id, "val_loss", 0.5, step=1
    )
    kubectl.wait("--for=condition=Running", "trainingrun/lp-sweep-0", "-n", ns)
    kubectl.run("label", "pods", "-n", ns, "-l", "tradewind.dev/run=lp-sweep-0", f"{HOLD_LABEL}-")
    kubectl.wait("--for=condition=Succeeded", "sweep/lp-sweep", "-n", ns, timeout=120)
    status = kubectl.get("sweep/lp-sweep", "-n", ns)["status"]
    assert status["trials"]["completed"] == 1 and status["bestValue"] == 0.5, status


def test_the_operator_works_with_only_the_charts_permissions(
    helm: Helm,
    kubectl: Kubectl,
    stack: DevStack,
    crds_installed: None,
    namespace: str,
    namespaces: list[str],
    tmp_path: Path,
) -> None:
    """The real operator, authenticated as the chart's service account and started the way
    the chart starts it (namespaced mode), takes a run and a Sweep from creation to
    Succeeded: every call it makes is allowed, and none is refused along the way."""
    watched = namespaces[0]
    with Release(helm, namespace, {"watchNamespaces": [watched]}) as release:
        kubeconfig = _token_kubeconfig(kubectl, release, tmp_path / "operator.kubeconfig")
        operator = OperatorProcess(
            stack, tmp_path, f"--namespace={watched}", KUBECONFIG=str(kubeconfig),
            TRADEWIND_LEASE_NAMESPACE=namespace, TRADEWIND_LEASE_NAME=release.fullname,
        )  # fmt: skip
        operator.start()
        try:
            run = {
                "apiVersion": "tradewind.dev/v1alpha1",
                "kind": "TrainingRun",
                "metadata": {"name": "least-privilege", "namespace": watched},
                "spec": {"nodes": 2, "podTemplate": {"labels": {HOLD_LABEL: "true"}}},
            }
            kubectl.apply(run)
            kubectl.wait("--for=condition=Running", "trainingrun/least-privilege", "-n", watched)
            kubectl.run("label", "pods", "-n", watched, "-l",
                        "tradewind.dev/run=least-privilege", f"{HOLD_LABEL}-")  # fmt: skip
            kubectl.wait("--for=condition=Succeeded", "trainingrun/least-privilege", "-n", watched)
            url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
            deadline = time.monotonic() + 30
            while True:  # the counters move just after the status write kubectl saw
                with urllib.request.urlopen(url, timeout=5) as resp:
                    text = resp.read().decode()
                done = _metric(text, 'tradewind_runs{kind="TrainingRun",phase="Succeeded"}')
                if done >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert done >= 1
            assert _metric(text, "tradewind_reconcile_duration_seconds_count") >= 3
            assert _metric(text, "tradewind_reconcile_errors_total") == 0
            _sweep_to_the_end(kubectl, stack, watched)
        finally:
            operator.stop()
        text = operator.log.read_text()
        refused = [
            line
            for line in text.splitlines()
            if re.search(r"forbidden|Forbidden|\b403\b|Not enough permissions", line)
        ]
        assert not refused, "\n".join(refused[:5])
        assert "tradewind operator starting" in text
