"""kwok for the dev stack: fake GPU nodes, and the stages that move their pods along.

The stages are kwok's own (from its module, copied into the binary cache by
hack/build-binaries.sh) with shorter delays (STAGES), except that a bound pod starts in one
step (POD_START: Running and Ready, with its IP, in one status patch and no Event) where
kwok takes two (pod-create: IP and Pending, with a "Created" Event; pod-ready: Running).
With a thousand runs starting (bench/operator_scale.py) kwok sent 4 status patches per pod
(2 when few start at once) and 1.5 Events: a fifth of the apiserver's requests, spent on
simulating kubelets rather than on the cluster under test.

pod-complete is changed so tests decide what a pod does:

- a pod labelled `tradewind.dev/fake-hold: "true"` stays Running until the label is removed;
- a pod labelled `pod-container-running-failed.stage.kwok.x-k8s.io: "true"` fails instead,
  with the exit code and reason from the annotations
  `pod-container-running-failed.stage.kwok.x-k8s.io/exit-code` and `.../reason`
  (kwok's chaos stage), e.g. 137 and OOMKilled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HOLD_LABEL = "tradewind.dev/fake-hold"
FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
FAIL_EXIT_CODE = f"{FAIL_LABEL}/exit-code"
FAIL_REASON = f"{FAIL_LABEL}/reason"
NODE_LABEL = "tradewind.dev/fake-node"
GPU_POOL_LABEL = "tradewind.dev/gpu-pool"

STAGES = {
    "node/fast/node-initialize.yaml": None,
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml": None,
    "pod/general/pod-complete.yaml": (1000, 1000),
    "pod/general/pod-delete.yaml": None,
    "pod/chaos/pod-container-running-failed.yaml": (500, 0),
}
"""Stage file -> (delay ms, jitter ms) to use instead of kwok's, or None to keep it (kwok
waits between the two). Pods can still ask for other delays with kwok's per-pod annotations
(e.g. `pod-complete.stage.kwok.x-k8s.io/delay`)."""

POD_START_STATUS = """\
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
{{ range .spec.readinessGates }}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: {{ .conditionType | Quote }}}
{{ end }}
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running: {startedAt: {{ $now | Quote }}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

POD_START: dict[str, Any] = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-start"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.podIP", "operator": "DoesNotExist"},
            ]
        },
        "weight": 1,
        "delay": {
            "durationMilliseconds": 100,
            "durationFrom": {
                "expressionFrom": '.metadata.annotations["pod-start.stage.kwok.x-k8s.io/delay"]'
            },
            "jitterDurationMilliseconds": 300,
        },
        "next": {"statusTemplate": POD_START_STATUS},
    },
}
"""A bound pod is Running and Ready 0.1-0.3 s after binding (a container start's worth; kwok's
pod-create alone waits 1-6 s), unless its annotation `pod-start.stage.kwok.x-k8s.io/delay`
(a duration) says otherwise."""


def _not_labelled(label: str) -> dict[str, Any]:
    return {"key": f'.metadata.labels["{label}"]', "operator": "DoesNotExist"}


def render_stages(stage_dir: Path) -> str:
    """The kwok --config document: POD_START, then kwok's stages with shorter delays and the
    hold/fail exclusions on pod-complete."""
    docs = [POD_START]
    for rel, timing in STAGES.items():
        path = stage_dir / rel
        if not path.is_file():
            raise FileNotFoundError(
                f"kwok stage {path} is missing; run hack/build-binaries.sh kwok"
            )
        stage = yaml.safe_load(path.read_text())
        if timing is not None:
            delay = stage["spec"].setdefault("delay", {})
            delay["durationMilliseconds"], delay["jitterDurationMilliseconds"] = timing
        if stage["metadata"]["name"] == "pod-complete":
            exprs = stage["spec"]["selector"]["matchExpressions"]
            exprs += [_not_labelled(HOLD_LABEL), _not_labelled(FAIL_LABEL)]
        docs.append(stage)
    return yaml.safe_dump_all(docs, sort_keys=False)


def fake_node(
    name: str, gpus: int, pool: str, cpu: int = 32, memory: str = "256Gi"
) -> dict[str, Any]:
    """A Node that kwok manages, with `nvidia.com/gpu` capacity and GPU-pool labels."""
    capacity = {
        "cpu": str(cpu),
        "memory": memory,
        "pods": "110",
        "nvidia.com/gpu": str(gpus),
        "ephemeral-storage": "1Ti",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                NODE_LABEL: "true",
                GPU_POOL_LABEL: pool,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.count": str(gpus),
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
