"""A namespace's MinIO user: its policy and where its keys come from (MinIO itself: the
integration test tests/integration/test_storage_isolation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradewind.storage_tenants import ProvisionError, new_tenant, tenant_policy, tenants_from_folder


def test_the_policy_reaches_the_namespaces_prefix_only() -> None:
    policy = tenant_policy("tradewind", "team-a")
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::tradewind", "arn:aws:s3:::tradewind/team-a/*"}
    objects = next(s for s in policy["Statement"] if s["Resource"] == [
        "arn:aws:s3:::tradewind/team-a/*"
    ])  # fmt: skip
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(objects["Action"])
    listing = next(s for s in policy["Statement"] if "s3:ListBucket" in s["Action"])
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["team-a/*"]}}
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in policy["Statement"])


def test_keys_come_fresh_or_from_the_charts_folder(tmp_path: Path) -> None:
    a, b = new_tenant("team-a"), new_tenant("team-a")
    assert a.access_key != b.access_key and a.secret_key != b.secret_key
    assert len(a.access_key) == 20 and len(a.secret_key) >= 32
    secret = a.secret_manifest("creds")
    assert secret["metadata"] == {"name": "creds", "namespace": "team-a"}
    assert secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == a.secret_key

    (tmp_path / "team-a.access-key").write_text("AKEY")
    (tmp_path / "team-a.secret-key").write_text("secret\n")
    (tmp_path / "team-b.access-key").write_text("BKEY")
    (tmp_path / "team-b.secret-key").write_text("other")
    found = tenants_from_folder(tmp_path)
    assert [(t.namespace, t.access_key, t.secret_key) for t in found] == [
        ("team-a", "AKEY", "secret"),
        ("team-b", "BKEY", "other"),
    ]
    (tmp_path / "team-b.secret-key").unlink()
    with pytest.raises(ProvisionError, match=r"team-b\.access-key has no team-b\.secret-key"):
        tenants_from_folder(tmp_path)
