"""The operator image's install steps, run for real: the RUN lines of the Dockerfile's
`operator-build` stage in a fresh virtual environment, from a context holding only what the
stage COPYs. (No Docker engine here; pip's local cache serves the downloads, so
--no-cache-dir is dropped: it changes where wheels come from, not what is installed.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dockerfile import ROOT, parse

pytestmark = pytest.mark.integration


def _context(stage_copies: list[str], into: Path) -> None:
    """COPY src... dest, relative to the WORKDIR, with .dockerignore's exclusions."""
    for copy in stage_copies:
        *sources, dest = copy.split()
        for src in sources:
            target = into / dest / (Path(src).name if dest.endswith("/") else "")
            if (ROOT / src).is_dir():
                shutil.copytree(
                    ROOT / src, into / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy(ROOT / src, target)


def test_operator_install_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    _, stages = parse()
    build = stages["operator-build"]
    context, venv = tmp_path / "src", tmp_path / "opt-venv"
    context.mkdir()
    _context(build.args("COPY"), context)
    assert sorted(p.name for p in context.iterdir()) == ["README.md", "pyproject.toml", "tradewind"]
    python = Path(sys.base_prefix) / "bin" / "python3"
    for run in build.args("RUN"):
        script = run.replace("/opt/venv", str(venv)).replace(" --no-cache-dir", "")
        script = script.replace("python -m venv", f"{python} -m venv", 1)
        result = subprocess.run(
            ["/bin/sh", "-c", script], cwd=context, capture_output=True, text=True,
            check=False, timeout=540,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    bin_ = venv / "bin"
    # The image's ENTRYPOINT, `tradewind operator`, starts (here: prints its options).
    out = subprocess.run(
        [bin_ / "tradewind", "operator", "--help"], capture_output=True, text=True, check=True
    )
    assert "--liveness" in out.stdout and "--metrics-port" in out.stdout
    check = "import tradewind.operator.main, tradewind.sweeps.study, kopf, kubernetes, optuna"
    check += "; import tradewind.storage_tenants, minio"  # the chart's MinIO provisioner sidecar
    subprocess.run([bin_ / "python", "-c", check], check=True, timeout=120)
    # Only the operator extra: no torch, no trainer dependencies, and no pip left behind.
    for absent in ("torch", "mlflow", "pip"):
        probe = subprocess.run(
            [bin_ / "python", "-c", f"import {absent}"], capture_output=True, check=False
        )
        assert probe.returncode != 0, f"{absent} is installed in the operator image"
