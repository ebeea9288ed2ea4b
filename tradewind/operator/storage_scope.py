"""Which object-store URIs a run may name: its own namespace's prefix of the checkpoint bucket,
`s3://<bucket>/<namespace>/`, plus the prefixes an administrator lists in the namespace
annotation `tradewind.dev/allowed-storage` (comma-separated, e.g. `s3://shared/,s3://x/y/`).

The chart's ValidatingAdmissionPolicy (helm/tradewind/templates/storage-policy.yaml) applies
the same rule at admission; the operator applies it again, for clusters without the policy.
Prefixes end at a `/`: `s3://tradewind/team-a` allows `s3://tradewind/team-a/...`, never
`s3://tradewind/team-ab/...`. URIs with `%` escapes or `.`/`..` segments are refused outright
(the trainer unquotes URIs; an escaped `..` would climb out of the prefix).
"""

from __future__ import annotations

import json
import logging
import re

from kubernetes.client.exceptions import ApiException

from tradewind.api import RLRun, TrainingRun
from tradewind.operator.kube import Kube

log = logging.getLogger(__name__)
ALLOWED_STORAGE_ANNOTATION = "tradewind.dev/allowed-storage"
REASON = "StorageNotAllowed"
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


def own_prefix(bucket: str, namespace: str) -> str:
    """The prefix a namespace's runs (and its store credentials) may reach."""
    return f"s3://{bucket}/{namespace}/"


def allowed_prefixes(bucket: str, namespace: str, annotation: str | None) -> list[str]:
    """The namespace's own prefix, then those of the admin annotation; each ends with `/`."""
    extra = [p.strip() for p in (annotation or "").split(",") if p.strip()]
    return [own_prefix(bucket, namespace), *(p if p.endswith("/") else p + "/" for p in extra)]


def within(uri: str, prefix: str) -> bool:
    """Whether `uri` is `prefix` (which ends with `/`) or below it: `s3://b/team-a` and
    `s3://b/team-a/x` are within `s3://b/team-a/`, `s3://b/team-ab` is not."""
    return (uri + "/").startswith(prefix)


def storage_uris(run: TrainingRun | RLRun) -> list[tuple[str, str]]:
    """(field path, URI) of each `s3://` URI the run reads or writes."""
    checkpoint = run.spec.checkpoint
    data = (
        ("spec.data.source", run.spec.data.source)
        if isinstance(run, TrainingRun)
        else ("spec.environment.data.source", run.spec.environment.data.source)
    )
    fields = [
        ("spec.checkpoint.storage", checkpoint.storage),
        ("spec.checkpoint.resumeFrom", checkpoint.resume_from),
        data,
    ]
    return [(field, uri) for field, uri in fields if uri and uri.startswith("s3://")]


def refusal(field: str, uri: str, prefixes: list[str]) -> str | None:
    """Why `uri` (at `field`) is out of reach of `prefixes`, or None if it is within one."""
    path = uri.removeprefix("s3://")
    if "%" in path or _DOT_SEGMENT.search(path.partition("/")[2]):
        return f"{field}: {uri} must not contain '%' escapes or '.'/'..' path segments"
    if any(within(uri, p) for p in prefixes):
        return None
    allowed = ", ".join(prefixes)
    return (
        f"{field}: {uri} is outside the storage this namespace may reach; allowed: {allowed} "
        f"(an administrator can allow more with the namespace annotation "
        f"{ALLOWED_STORAGE_ANNOTATION})"
    )


def storage_refusal(
    run: TrainingRun | RLRun, bucket: str, annotation: str | None = None
) -> str | None:
    """The first out-of-reach URI of `run`, as a message naming its field; None if all are
    within the namespace's prefixes (`annotation`: the namespace's admin annotation)."""
    prefixes = allowed_prefixes(bucket, run.metadata.namespace or "default", annotation)
    for field, uri in storage_uris(run):
        message = refusal(field, uri, prefixes)
        if message is not None:
            return message
    return None


def namespace_allowed_storage(kube: Kube, namespace: str) -> str | None:
    """The namespace's `tradewind.dev/allowed-storage` annotation (None if absent or the
    namespace cannot be read: then only the own prefix is allowed)."""
    try:
        body = json.loads(kube.request("GET", f"/api/v1/namespaces/{namespace}"))
    except ApiException as exc:
        log.warning("cannot read namespace %s for %s: %s", namespace, REASON, exc.reason)
        return None
    annotations = body.get("metadata", {}).get("annotations") or {}
    value = annotations.get(ALLOWED_STORAGE_ANNOTATION)
    return value if isinstance(value, str) else None


def check_run_storage(run: TrainingRun | RLRun, bucket: str, kube: Kube) -> str | None:
    """`storage_refusal` of a run in the cluster. The namespace is read only when a URI falls
    outside the own prefix (so the common case costs no request)."""
    if storage_refusal(run, bucket) is None:
        return None
    annotation = namespace_allowed_storage(kube, run.metadata.namespace or "default")
    return storage_refusal(run, bucket, annotation)
