"""The operator's start-up (`loop.setup`) opens no Optuna storage: the study is opened when a
Sweep first needs it, so an operator without Sweeps needs neither a volume nor a database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest
import yaml
from kubernetes import client
from kubernetes.config import kube_config

from tradewind.operator import sweep_reconcile
from tradewind.operator.loop import setup


def test_start_up_opens_no_optuna_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    studies = tmp_path / "studies"
    monkeypatch.setenv("TRADEWIND_OPTUNA_STORAGE", f"sqlite:///{studies}/optuna.db")
    monkeypatch.setattr(sweep_reconcile, "_STORAGES", {})

    async def start() -> kopf.Memo:
        memo = kopf.Memo()
        setup(memo)
        return memo

    default = client.Configuration.get_default_copy()
    try:
        memo = asyncio.run(start())
    finally:  # setup loaded the kubeconfig above as the client's default
        client.Configuration.set_default(default)
    assert memo.settings.optuna_storage.endswith("optuna.db")
    assert not sweep_reconcile._STORAGES and not studies.exists()
