"""One namespace cannot reach another's checkpoints, on the real stack:

1. the store: MinIO users provisioned per namespace (tradewind/storage_tenants.py, with the
   stack's root as admin) — team-a's keys read, write, list and delete under team-a's prefix
   and MinIO refuses them (AccessDenied) everything under team-b's;
2. admission: the chart's ValidatingAdmissionPolicy, rendered by helm and applied alone,
   refuses a run whose resumeFrom / storage / data.source points into another namespace's
   prefix, naming the field, and follows the admin annotation;
3. the operator: without the policy, it fails such a run (StorageNotAllowed) and creates
   nothing for it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from minio import Minio
from minio.error import S3Error

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_helm import Helm
from tradewind.devstack import DevStack
from tradewind.operator.builders import RUN_LABEL
from tradewind.storage_tenants import Tenant, new_tenant, provision_all
from tradewind.trainer.storage import StorageError, open_store

pytestmark = pytest.mark.integration

BUCKET = "tradewind"
ANNOTATION = "tradewind.dev/allowed-storage"


def _client(stack: DevStack, access: str, secret: str) -> Minio:
    endpoint = stack.env()["AWS_ENDPOINT_URL"].removeprefix("http://")
    return Minio(endpoint, access_key=access, secret_key=secret, secure=False)


def _root(stack: DevStack) -> Minio:
    env = stack.env()
    return _client(stack, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def tenants(stack: DevStack) -> dict[str, Tenant]:
    suffix = uuid.uuid4().hex[:6]
    a, b = new_tenant(f"team-a-{suffix}"), new_tenant(f"team-b-{suffix}")
    env = stack.env()
    done = provision_all(
        env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
        BUCKET, [a, b],
    )  # fmt: skip
    assert done == [a.namespace, b.namespace]
    return {"a": a, "b": b}


def _denied(call: Any) -> str:
    with pytest.raises(S3Error) as caught:
        call()
    return str(caught.value.code)


def test_a_namespaces_keys_reach_its_prefix_and_nothing_of_another(
    stack: DevStack, tenants: dict[str, Tenant]
) -> None:
    a, b = tenants["a"], tenants["b"]
    root, mine = _root(stack), _client(stack, a.access_key, a.secret_key)
    victim = f"{b.namespace}/run/uid/step-0000000001/state.pt"
    root.put_object(BUCKET, victim, io.BytesIO(b"b's weights"), 11)

    # Its own prefix: write, read, list, delete.
    own = f"{a.namespace}/run/uid/step-0000000001/state.pt"
    mine.put_object(BUCKET, own, io.BytesIO(b"a's weights"), 11)
    assert mine.get_object(BUCKET, own).read() == b"a's weights"
    listed = [o.object_name for o in mine.list_objects(BUCKET, f"{a.namespace}/", recursive=True)]
    assert listed == [own]
    mine.remove_object(BUCKET, own)

    # The other namespace's prefix, the bucket's root, a new bucket: refused by MinIO.
    assert _denied(lambda: mine.get_object(BUCKET, victim)) == "AccessDenied"
    assert _denied(lambda: mine.stat_object(BUCKET, victim)) in ("AccessDenied", "Forbidden")
    assert _denied(lambda: mine.put_object(BUCKET, victim, io.BytesIO(b"x"), 1)) == "AccessDenied"
    assert _denied(lambda: list(mine.list_objects(BUCKET, f"{b.namespace}/"))) == "AccessDenied"
    assert _denied(lambda: list(mine.list_objects(BUCKET, ""))) == "AccessDenied"
    assert _denied(lambda: mine.remove_object(BUCKET, victim)) == "AccessDenied"
    assert _denied(lambda: mine.make_bucket(f"steal-{a.namespace}")) == "AccessDenied"
    assert root.get_object(BUCKET, victim).read() == b"b's weights"  # untouched

    # The trainer's own store says so, naming the URI and not the secret.
    env = {"AWS_ENDPOINT_URL": stack.env()["AWS_ENDPOINT_URL"],
           "AWS_ACCESS_KEY_ID": a.access_key, "AWS_SECRET_ACCESS_KEY": a.secret_key}  # fmt: skip
    store = open_store(f"s3://{BUCKET}/{b.namespace}/run/uid", environ=env)
    with pytest.raises(StorageError, match="AccessDenied") as caught:
        store.get("step-0000000001/state.pt")
    assert f"s3://{BUCKET}/{b.namespace}/run/uid/" in str(caught.value)
    assert a.secret_key not in str(caught.value)


def test_the_cli_provisions_a_namespace_and_prints_its_secret(stack: DevStack) -> None:
    ns = f"team-c-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, "-m", "tradewind.cli", "store", "provision", "--namespace", ns,
         "--secret-name", "store-creds"],
        env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"provisioned {ns}: s3://{BUCKET}/{ns}/" in result.stderr
    (secret,) = list(yaml.safe_load_all(result.stdout))
    assert secret["metadata"] == {"name": "store-creds", "namespace": ns}
    keys = secret["stringData"]
    theirs = _client(stack, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])
    theirs.put_object(BUCKET, f"{ns}/x", io.BytesIO(b"1"), 1)
    assert _denied(lambda: theirs.put_object(BUCKET, "default/x", io.BytesIO(b"1"), 1)) == (
        "AccessDenied"
    )
    # Provisioning again with new keys retires the old ones.
    again = subprocess.run(
        [sys.executable, "-m", "tradewind.cli", "store", "provision", "--namespace", ns],
        env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert _denied(lambda: list(theirs.list_objects(BUCKET, f"{ns}/"))) == "InvalidAccessKeyId"


def test_the_charts_keys_provisioned_as_its_sidecar_does_reach_their_namespace_only(
    stack: DevStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The chart's tenants Secret, as the MinIO pod mounts it, through the sidecar's command
    (`tradewind store provision --keys-dir`): each namespace's credentials Secret works, for
    its own prefix only."""
    home = tmp_path_factory.mktemp("chart")
    ns_a, ns_b = f"chart-a-{uuid.uuid4().hex[:6]}", f"chart-b-{uuid.uuid4().hex[:6]}"
    values = {"minio": {"enabled": True}, "watchNamespaces": [ns_a, ns_b]}
    docs = Helm(stack, home).template("iso", ns_a, values)
    secrets = {(d["metadata"]["name"], d["metadata"]["namespace"]): d["data"]
               for d in docs if d["kind"] == "Secret"}  # fmt: skip
    keys_dir = home / "tenants"
    keys_dir.mkdir()
    for key, value in secrets[("iso-tradewind-minio-tenants", ns_a)].items():
        (keys_dir / key).write_bytes(base64.b64decode(value))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    (sidecar,) = [c for pod in pods for c in pod["containers"] if c["name"] == "provisioner"]
    command = [a.replace("/etc/tradewind/tenants", str(keys_dir)) for a in sidecar["command"]]
    command = [a for a in command if not a.startswith("--every")]  # once, not every few minutes
    assert command[:3] == ["tradewind", "store", "provision"]
    result = subprocess.run(
        [sys.executable, "-m", "tradewind.cli", *command[1:]],
        env={**os.environ, **stack.env()}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    creds = {ns: secrets[("iso-tradewind-minio-credentials", ns)] for ns in (ns_a, ns_b)}
    a = {k: base64.b64decode(v).decode() for k, v in creds[ns_a].items()}
    client = _client(stack, a["AWS_ACCESS_KEY_ID"], a["AWS_SECRET_ACCESS_KEY"])
    client.put_object(BUCKET, f"{ns_a}/r/u/x", io.BytesIO(b"1"), 1)
    assert _denied(lambda: client.put_object(BUCKET, f"{ns_b}/r/u/x", io.BytesIO(b"1"), 1)) == (
        "AccessDenied"
    )


# --- admission ----------------------------------------------------------------------------


def _run(name: str, ns: str, spec: dict[str, Any], kind: str = "TrainingRun") -> dict[str, Any]:
    if kind == "RLRun":
        data = spec.pop("data", None)
        spec = {"agents": [{"name": "ppo", "algorithm": "ppo"}], **spec}
        if data:
            spec["environment"] = {"data": data}
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _sweep(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {"kind": "TrainingRun", "spec": spec},
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "searchSpace": {"seed": {"type": "int", "low": 1, "high": 3}},
            "maxTrials": 2,
        },
    }


def _create(kubectl: Kubectl, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """A server-side dry-run create: the whole admission chain, nothing stored."""
    return kubectl.run(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest), check=False
    )


@pytest.fixture
def storage_policy(
    stack: DevStack,
    kubectl: Kubectl,
    crds_installed: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[dict[str, Any]]]:
    """The chart's policy and binding (`helm template --show-only`), applied alone."""
    helm = Helm(stack, tmp_path_factory.mktemp("helm"))
    out = helm.with_values(
        "template", "iso", "default", {"objectStore": {"checkpointBucket": BUCKET}},
        "--show-only", "templates/storage-policy.yaml",
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    kubectl.apply("\n---\n".join(json.dumps(d) for d in docs), "--server-side")
    yield docs
    for doc in reversed(docs):
        kubectl.run("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)


def _until_enforced(kubectl: Kubectl, manifest: dict[str, Any]) -> str:
    """The policy applies once the apiserver has compiled it: retry, bounded, until refused."""
    deadline = time.monotonic() + 60
    while True:
        result = _create(kubectl, manifest)
        if result.returncode != 0 or time.monotonic() > deadline:
            assert result.returncode != 0, "the policy was not enforced within 60 s"
            return result.stderr
        time.sleep(0.5)


def test_the_admission_policy_refuses_another_namespaces_prefix_naming_the_field(
    kubectl: Kubectl, storage_policy: list[dict[str, Any]], namespace: str
) -> None:
    ns, other = namespace, f"{namespace}-b"
    own = f"s3://{BUCKET}/{ns}"
    theirs = f"s3://{BUCKET}/{other}/r/uid/step-0000000002"
    allowed = f"allowed: {own}/"

    message = _until_enforced(kubectl, _run("r", ns, {"checkpoint": {"resumeFrom": theirs}}))
    assert f"spec.checkpoint.resumeFrom: {theirs} is outside" in message and allowed in message
    refused = [
        ("spec.checkpoint.storage", _run("r", ns, {"checkpoint": {"storage": theirs}})),
        ("spec.data.source", _run("r", ns, {"data": {"source": f"s3://{BUCKET}/{other}/p.csv"}})),
        ("spec.environment.data.source",
         _run("r", ns, {"data": {"source": f"s3://{BUCKET}/{other}/p.csv"}}, "RLRun")),
        ("spec.checkpoint.storage", _run("r", ns, {"checkpoint": {"storage": f"{own}b/r"}})),
        ("spec.template.spec.checkpoint.resumeFrom",
         _sweep("s", ns, {"checkpoint": {"resumeFrom": theirs}})),
    ]  # fmt: skip
    for field, manifest in refused:
        result = _create(kubectl, manifest)
        assert result.returncode != 0, (field, result.stdout)
        assert f"{field}: s3://" in result.stderr and allowed in result.stderr, result.stderr
    escaped = _create(kubectl, _run("r", ns, {"checkpoint": {"storage": f"{own}/../{other}"}}))
    assert "must not contain '%' escapes or '.'/'..' path segments" in escaped.stderr

    accepted = [
        _run("r", ns, {"checkpoint": {"storage": f"{own}/r", "resumeFrom": f"{own}/old/u/s"}}),
        _run("r", ns, {"data": {"source": f"{own}/prices.csv"}}, "RLRun"),
        _run("r", ns, {"checkpoint": {"storage": "file:///data/ckpt"}}),
        _run("r", ns, {}),
    ]
    for manifest in accepted:
        result = _create(kubectl, manifest)
        assert result.returncode == 0, result.stderr

    # An administrator allows a shared prefix: that prefix passes, another namespace's not.
    kubectl.run("annotate", "namespace", ns, f"{ANNOTATION}=s3://shared/prices/,s3://x")
    shared = _run("r", ns, {"data": {"source": "s3://shared/prices/all.csv"}})
    deadline = time.monotonic() + 30
    while (result := _create(kubectl, shared)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)  # the policy sees the namespace through an informer
    assert result.returncode == 0, result.stderr
    still = _create(kubectl, _run("r", ns, {"checkpoint": {"storage": theirs}}))
    assert still.returncode != 0
    assert f"allowed: {own}/, s3://shared/prices/, s3://x/" in still.stderr


# --- the operator, without the policy -------------------------------------------------------


def test_the_operator_fails_a_run_out_of_reach_without_the_policy(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    policies = kubectl.get(
        "validatingadmissionpolicies", "-l", "app.kubernetes.io/part-of=tradewind"
    )
    assert policies["items"] == []  # nothing refuses it at admission
    theirs = f"s3://{BUCKET}/{namespace}-b/r/uid/step-0000000002"
    poach = _run("poach", namespace, {"checkpoint": {"resumeFrom": theirs}})
    # A policy deleted moments ago (the test before) is still enforced until the apiserver's
    # informer sees the deletion: wait, bounded, until admission lets the run through.
    deadline = time.monotonic() + 60
    while (result := _create(kubectl, poach)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.5)
    kubectl.apply(poach)
    kubectl.apply(
        _run("own", namespace, {"checkpoint": {"storage": f"s3://{BUCKET}/{namespace}/o"}})
    )

    kubectl.wait("--for=condition=Failed", "trainingrun/poach", "-n", namespace)
    status = kubectl.get("trainingrun/poach", "-n", namespace)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "StorageNotAllowed"
    assert failed["message"].startswith(f"spec.checkpoint.resumeFrom: {theirs} is outside")
    assert f"allowed: s3://{BUCKET}/{namespace}/" in failed["message"]
    events = kubectl.get("events", "-n", namespace, "--field-selector",
                         "involvedObject.name=poach,reason=StorageNotAllowed")  # fmt: skip
    assert events["items"], "no StorageNotAllowed Event"

    # The run in its own prefix gets its Job; the refused one gets nothing.
    deadline = time.monotonic() + 60
    while not kubectl.get("jobs", "-n", namespace, "-l", f"{RUN_LABEL}=own")["items"]:
        assert time.monotonic() < deadline, "the run in its own prefix got no Job in 60 s"
        time.sleep(0.5)
    assert kubectl.get("jobs", "-n", namespace, "-l", f"{RUN_LABEL}=poach")["items"] == []
