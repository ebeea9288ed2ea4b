"""Per-namespace MinIO users: each namespace where runs go gets its own user, whose policy
allows only `s3://<bucket>/<namespace>/*` (and listing under that prefix) — the same prefix
the operator and the chart's admission policy keep a namespace's runs in
(tradewind/operator/storage_scope.py). Provisioning needs MinIO's admin API and the root
credentials; the run pods only ever see their namespace's user.

Used by `tradewind store provision` (the chart's hook Job, the dev stack, tests). Imported by
neither the trainer nor the operator's reconcile.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from minio import Minio, MinioAdmin

REQUEST_TIMEOUT_S = 10.0
ACCESS_KEY_FILE = "{namespace}.access-key"
SECRET_KEY_FILE = "{namespace}.secret-key"
"""A keys folder (the chart's tenants Secret, mounted) holds these two files per namespace."""
_ALREADY_APPLIED = "XMinioAdminPolicyChangeAlreadyApplied"


class ProvisionError(RuntimeError):
    """The store cannot be provisioned as asked; the message names what, never a secret."""


@dataclass(frozen=True)
class Tenant:
    """One namespace's store user."""

    namespace: str
    access_key: str
    secret_key: str

    def secret_manifest(self, name: str) -> dict[str, Any]:
        """The namespace's credentials Secret (the keys the run pods read)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "type": "Opaque",
            "stringData": {
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
            },
        }


def new_tenant(namespace: str) -> Tenant:
    """A tenant with fresh random keys (20-character access key, as AWS's)."""
    alphabet = string.ascii_uppercase + string.digits
    access = "".join(secrets.choice(alphabet) for _ in range(20))
    return Tenant(namespace, access, secrets.token_urlsafe(30))


def tenants_from_folder(folder: Path) -> list[Tenant]:
    """The tenants whose keys a folder holds (`<namespace>.access-key`, `.secret-key`)."""
    suffix = ACCESS_KEY_FILE.format(namespace="")
    found = []
    for path in sorted(folder.glob(f"*{suffix}")):
        namespace = path.name.removesuffix(suffix)
        secret = folder / SECRET_KEY_FILE.format(namespace=namespace)
        if not secret.is_file():
            raise ProvisionError(f"{folder}: {path.name} has no {secret.name} beside it")
        found.append(Tenant(namespace, path.read_text().strip(), secret.read_text().strip()))
    return found


def policy_name(namespace: str) -> str:
    return f"tradewind-{namespace}"


def tenant_policy(bucket: str, namespace: str) -> dict[str, Any]:
    """Read, write, delete and list under `<bucket>/<namespace>/`, nothing else."""
    objects = f"arn:aws:s3:::{bucket}/{namespace}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # the SDK asks a bucket's region before its first request
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{namespace}/*"]}},
            },
            {
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": [objects],
            },
        ],
    }


@dataclass(frozen=True)
class Admin:
    """MinIO's admin API and an S3 client, both with the root credentials."""

    admin: MinioAdmin
    s3: Minio

    @classmethod
    def connect(cls, endpoint: str, access_key: str, secret_key: str) -> Admin:
        from minio import Minio, MinioAdmin
        from minio.credentials.providers import StaticProvider
        from urllib3 import PoolManager, Retry, Timeout

        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ProvisionError(f"endpoint {endpoint!r} is not http(s)://host[:port]")
        secure = url.scheme == "https"
        http = PoolManager(
            timeout=Timeout(connect=REQUEST_TIMEOUT_S, read=REQUEST_TIMEOUT_S),
            retries=Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        admin = MinioAdmin(
            endpoint=url.netloc,
            credentials=StaticProvider(access_key, secret_key),
            secure=secure,
            http_client=http,
        )
        s3 = Minio(
            url.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            http_client=http,
        )
        return cls(admin, s3)

    def wait_ready(self, timeout_s: float) -> None:
        """Until the admin API answers (MinIO may still be starting, e.g. in a hook Job)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.admin.info()
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise ProvisionError(
                        f"MinIO admin API not answering after {timeout_s:.0f}s: "
                        f"{type(exc).__name__}"
                    ) from None
                time.sleep(2)

    def ensure_bucket(self, bucket: str) -> None:
        if not self.s3.bucket_exists(bucket):
            self.s3.make_bucket(bucket)

    def provision(self, bucket: str, tenant: Tenant) -> None:
        """Create or update the tenant's policy and user (keys as given), and bind them.
        Idempotent; other users bound to the same policy (older keys) are removed."""
        from minio.error import MinioAdminException

        name = policy_name(tenant.namespace)
        self.admin.policy_add(name, policy=tenant_policy(bucket, tenant.namespace))
        self.admin.user_add(tenant.access_key, tenant.secret_key)
        try:
            self.admin.attach_policy([name], user=tenant.access_key)
        except MinioAdminException as exc:
            if _ALREADY_APPLIED not in str(exc):
                raise
        for user in self._users_of(name):
            if user != tenant.access_key:
                self.admin.user_remove(user)

    def _users_of(self, policy: str) -> list[str]:
        answer = json.loads(self.admin.get_policy_entities(users=[], groups=[], policies=[policy]))
        return [
            user
            for mapping in answer.get("policyMappings") or []
            if mapping.get("policy") == policy
            for user in mapping.get("users") or []
        ]


def provision_all(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    tenants: Iterable[Tenant],
    wait_s: float = 0.0,
) -> list[str]:
    """Provision every tenant (the bucket first); returns the namespaces done."""
    from minio.error import MinioAdminException, S3Error

    admin = Admin.connect(endpoint, access_key, secret_key)
    try:
        if wait_s:
            admin.wait_ready(wait_s)
        admin.ensure_bucket(bucket)
        done = []
        for tenant in tenants:
            admin.provision(bucket, tenant)
            done.append(tenant.namespace)
    except (MinioAdminException, S3Error) as exc:
        raise ProvisionError(f"MinIO at {endpoint} refused provisioning: {exc}") from None
    return done
