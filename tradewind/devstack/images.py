"""The Tradewind images on this machine, for the real node: built from the Dockerfile with
local docker (hack/build-images.sh first makes the Dockerfile's Debian base and starts dockerd)
and copied into the node's containerd, so pods start them without a registry."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tradewind.devstack import node_images
from tradewind.devstack.node_config import NodePlan
from tradewind.devstack.processes import StackError
from tradewind.devstack.stack import REPO_ROOT

TRAINER_IMAGE = "tradewind-trainer:0.1.0"
"""The Dockerfile's trainer target, tagged as the README's install command tags it."""


def build(target: str, tag: str, log: Path, step: Callable[[str], object] = print) -> None:
    """`docker build --target <target> -t <tag>` of this checkout, after the base is made;
    docker's cache makes it seconds when nothing changed (cold, the trainer takes ~6 min)."""
    steps = (
        ("the Dockerfile's Debian base", [str(REPO_ROOT / "hack" / "build-images.sh")]),
        (
            f"docker build --target {target} -t {tag}",
            ["docker", "build", "--target", target, "-t", tag, str(REPO_ROOT)],
        ),
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    for what, argv in steps:
        step(what)
        with log.open("ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise StackError(f"{what} failed (exit {done.returncode}); see {log}")


def load_into_node(plan: NodePlan, tag: str) -> bool:
    """Copy docker's `tag` into the node unless it holds that build; True if copied."""
    return node_images.import_from_docker(plan.containerd_socket, tag)
