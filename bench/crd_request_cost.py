"""What one request costs the apiserver: TrainingRun create / status patch / get, against a
ConfigMap and an Event, with the CRD as `tradewind crds` generates it and two variants.

On a fresh dev stack (`tradewind dev up --nodes 0 --no-mlflow`), for each CRD variant in turn
(the CRD replaced in place, a new namespace each): N requests of each kind from a pool of 16
threads, and the kube-apiserver's CPU seconds over them (utime+stime from /proc), so the
figure is per request, server side. Variants:

- `schema defaults (before)`: the CRD as generated until 2026-12-04: every model default in
  the schema (so stored in every run) and the rules as the models write them;
- `generated`: crds/trainingruns.tradewind.dev.yaml as is: defaults only for the printer
  columns, the rules with the defaults spelled in (`tradewind/api/cel_defaults.py`), so the
  stored run is what was sent;
- `no CEL`: the generated CRD without its x-kubernetes-validations.

The run is bench/operator_scale.py's (2 nodes, a pod-template override); the status patch
is a Running status with four conditions, the shape the operator writes.

    .venv/bin/python bench/crd_request_cost.py [-n 1000] [--out bench/results/crd_request_cost.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.operator_scale import CLK_TCK, Stack, machine, training_run  # noqa: E402

CRD = REPO / "crds/trainingruns.tradewind.dev.yaml"
GROUP, VERSION, PLURAL = "tradewind.dev", "v1alpha1", "trainingruns"
STATUS = {
    "status": {
        "phase": "Running",
        "observedGeneration": 1,
        "attempt": 0,
        "restarts": 0,
        "nodes": {"ready": 2, "total": 2},
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": "AllNodesRunning",
                "message": "2/2 nodes running (attempt 0)",
                "lastTransitionTime": "2026-11-26T14:00:00Z",
                "observedGeneration": 1,
            }
            for kind in ("Created", "Running", "Ready", "Reconciling")
        ],
    }
}


def strip(node: Any, keys: set[str]) -> int:
    """Remove `keys` from every schema object under node; how many were removed."""
    removed = 0
    if isinstance(node, dict):
        for key in keys & node.keys():
            if key != "default" or "type" in node:  # a property named "default" stays
                del node[key]
                removed += 1
        for value in node.values():
            removed += strip(value, keys)
    elif isinstance(node, list):
        for value in node:
            removed += strip(value, keys)
    return removed


def with_schema_defaults(generated: dict[str, Any]) -> dict[str, Any]:
    """The CRD with every model default in its schema, as generated until 2026-12-04."""
    from tradewind.api.crd import structural_schema
    from tradewind.api.resources import TrainingRun
    from tradewind.api.spec_paths import unwrap_optional

    crd = copy.deepcopy(generated)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for field in ("spec", "status"):
        model = unwrap_optional(TrainingRun.model_fields[field].annotation)
        schema = structural_schema(model, f"TrainingRun.{field}")
        schema["description"] = root["properties"][field]["description"]
        root["properties"][field] = schema
    root["properties"]["spec"]["default"] = (
        TrainingRun.model_fields["spec"]
        .get_default(call_default_factory=True)
        .model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    return crd


def variants() -> dict[str, tuple[dict[str, Any], int]]:
    generated = yaml.safe_load(CRD.read_text())
    no_cel = copy.deepcopy(generated)
    n_cel = strip(no_cel, {"x-kubernetes-validations"})
    before = with_schema_defaults(generated)
    n_defaults = strip(copy.deepcopy(before), {"default"})
    return {
        "schema defaults (before)": (before, -n_defaults),
        "generated": (generated, 0),
        "no CEL": (no_cel, n_cel),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Meter:
    """N requests of one kind from 16 threads; the apiserver's CPU over them."""

    def __init__(self, apiserver_pid: int, n: int) -> None:
        self.pid, self.n = apiserver_pid, n
        self.rows: list[dict[str, Any]] = []

    def __call__(self, crd: str, request: str, fn: Callable[[int], Any]) -> dict[str, Any]:
        start, cpu0 = time.monotonic(), cpu_seconds(self.pid)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(fn, range(self.n)))
        time.sleep(0.5)  # watch fan-out of the last writes
        cpu = cpu_seconds(self.pid) - cpu0
        row = {
            "crd": crd,
            "request": request,
            "n": self.n,
            "wall_s": round(time.monotonic() - start, 2),
            "apiserver_cpu_s": round(cpu, 2),
            "ms_per_request": round(1000 * cpu / self.n, 2),
        }
        print(f"{crd:>20}  {request:<34} {row['ms_per_request']:6.2f} ms", flush=True)
        self.rows.append(row)
        return row


def _read(response: Any) -> None:
    response.read()
    response.release_conn()


def measure_runs(api: Any, meter: Meter, crd_name: str, crd: dict[str, Any], ns: str) -> None:
    """Replace the CRD with this variant; POST, status-PATCH and GET N runs in `ns`."""
    from kubernetes import client

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    ext = client.ApiextensionsV1Api(api)
    name = crd["metadata"]["name"]
    crd["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
        name
    ).metadata.resource_version
    ext.replace_custom_resource_definition(name, crd)
    core.create_namespace({"metadata": {"name": ns}})
    time.sleep(3)  # the apiserver rebuilds the CRD's handler
    args = (GROUP, VERSION, ns, PLURAL)
    rows = [
        meter(crd_name, "POST TrainingRun", lambda i: _read(
            custom.create_namespaced_custom_object(
                *args, training_run(f"r{i}", ns), _preload_content=False
            )
        )),
        meter(crd_name, "PATCH TrainingRun status (merge)", lambda i: _read(
            custom.patch_namespaced_custom_object_status(
                *args, f"r{i}", STATUS, _preload_content=False
            )
        )),
        meter(crd_name, "GET TrainingRun", lambda i: _read(
            custom.get_namespaced_custom_object(*args, f"r{i}", _preload_content=False)
        )),
    ]  # fmt: skip
    stored = custom.get_namespaced_custom_object(*args, "r0")
    for row in rows:
        row["stored_object_bytes"] = len(json.dumps(stored, separators=(",", ":")))


def measure_builtins(api: Any, meter: Meter, ns: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)

    def event(i: int) -> dict[str, Any]:
        return {
            "metadata": {"name": f"e{i}"},
            "involvedObject": {"kind": "TrainingRun", "name": f"r{i}", "namespace": ns},
            "reason": "Created",
            "message": "attempt 0: ConfigMap, Service and Job created",
            "type": "Normal",
        }

    config_map = {"data": {"run.yaml": "x: 1\n" * 300}}
    meter("-", "POST ConfigMap (1.5 KB)", lambda i: _read(core.create_namespaced_config_map(
        ns, {**config_map, "metadata": {"name": f"c{i}"}}, _preload_content=False
    )))  # fmt: skip
    meter("-", "POST Event", lambda i: _read(
        core.create_namespaced_event(ns, event(i), _preload_content=False)
    ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="Requests of each kind.")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/crd_request_cost.json")
    args = parser.parse_args()

    from kubernetes import client, config

    with tempfile.TemporaryDirectory(prefix="tw-crdcost-") as tmp:
        stack = Stack(Path(tmp) / "stack", 0)
        stack.up()
        try:
            stack.kubectl("apply", "--server-side", "-f", str(CRD))
            config.load_kube_config(str(stack.kubeconfig))
            api = client.ApiClient()
            api.configuration.connection_pool_maxsize = 32
            meter = Meter(stack.pids["kube-apiserver"], args.n)
            removed = {}
            for i, (name, (crd, n_removed)) in enumerate(variants().items()):
                measure_runs(api, meter, name, crd, f"v{i}")
                removed[name] = n_removed
            measure_builtins(api, meter, "v0")
        finally:
            stack.down()

    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "requests_each": args.n,
        "threads": 16,
        "schema_keys_removed": removed,
        "results": meter.rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n| CRD | request | apiserver CPU ms | stored run bytes |\n|---|---|---:|---:|")
    for r in meter.rows:
        size = r.get("stored_object_bytes", "")
        print(f"| {r['crd']} | {r['request']} | {r['ms_per_request']:.2f} | {size} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
