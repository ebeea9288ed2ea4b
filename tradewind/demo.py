"""`tradewind demo`: the whole loop on this machine, in one command.

The dev stack with a real node (kubelet, containerd, runc, CNI, CoreDNS, kube-proxy:
tradewind/devstack/real_node.py), the trainer image built from the Dockerfile
(hack/build-images.sh makes its Debian base) and copied into the node's containerd, the CRDs,
a Secret with MinIO's credentials, the operator, then the 2-node quickstart TrainingRun
applied as `kubectl apply` would; its pods train in containers as on a cluster. A live view
of its status until it succeeds; then where its checkpoint is in MinIO, its MLflow run and the
final metrics. The stack has its own folder (~/.tradewind/demo), so it never mixes with a
`tradewind dev up` stack; everything it builds (binaries, images, Python environment, stack
data) is reused by the next run: the image is rebuilt and copied only when its inputs change.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tradewind.devstack import DevStack, StackConfig, StackError, images, real_node
from tradewind.devstack.images import TRAINER_IMAGE
from tradewind.devstack.stack import REPO_ROOT

DEFAULT_MANIFEST = REPO_ROOT / "examples" / "trainingrun-quickstart-2node.yaml"
CREDENTIALS_SECRET = "minio-credentials"
NAMESPACE = "default"


def default_demo_dir() -> Path:
    return Path.home() / ".tradewind" / "demo"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass
class DemoResult:
    status: dict[str, Any]
    seconds: float


class Demo:
    def __init__(self, directory: Path, manifest: Path, console: Console) -> None:
        self.stack = DevStack(StackConfig(dev_dir=directory, nodes=0, real_node=True))
        self.manifest = manifest
        self.console = console
        self.operator: subprocess.Popen[bytes] | None = None

    # --- steps -----------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = [str(self.stack.bin / "kubectl"), "--kubeconfig", str(self.stack.kubeconfig)]
        argv += ["--cache-dir", str(self.stack.dir / "kubectl-cache"), *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def up(self) -> None:
        if os.geteuid() != 0:
            raise DemoError(
                "the demo's real node (kubelet, containerd) and its image build need root; run "
                "it as root, or train on this machine with `tradewind run -f "
                "examples/trainingrun-quickstart.yaml`"
            )
        self.console.print(f"[bold]stack[/bold] in {self.stack.dir}")
        self.stack.up(log=lambda line: self.console.print(f"  {line}", style="dim", markup=False))
        self.trainer_image()
        crds = REPO_ROOT / "crds"
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self.kubectl(
            "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"
        )  # fmt: skip
        creds = self.stack.state["minio"]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
            "stringData": {
                "AWS_ACCESS_KEY_ID": creds["user"],
                "AWS_SECRET_ACCESS_KEY": creds["password"],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
        self.start_operator()

    def trainer_image(self) -> None:
        """Build the trainer image from the Dockerfile and copy it into the node's containerd
        unless the node holds that build."""
        log = self.stack.dir / "logs" / "images.log"
        with (
            _timed(self.console, f"{TRAINER_IMAGE} built (cold: ~6 min; log {log})"),
            self.console.status("  building") as status,
        ):
            images.build("trainer", TRAINER_IMAGE, log, lambda what: status.update(f"  {what}"))
        plan = real_node.load_plan(self.stack)
        assert plan is not None
        with (
            _timed(self.console, f"{TRAINER_IMAGE} in the node's containerd"),
            self.console.status(f"  docker save {TRAINER_IMAGE} | ctr images import"),
        ):
            copied = images.load_into_node(plan, TRAINER_IMAGE)
        said = "copied into the node" if copied else "the node already holds this build"
        self.console.print(f"  {TRAINER_IMAGE}: {said}", style="dim")

    def operator_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEWIND_")}
        return (
            env
            | self.stack.env()
            | self.stack.pod_endpoints()
            | {
                "TRADEWIND_S3_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
                "TRADEWIND_TRAINER_IMAGE": TRAINER_IMAGE,
                "TRADEWIND_STATUS_POLL_SECONDS": "2",
            }
        )

    def start_operator(self) -> None:
        log = self.stack.dir / "logs" / "operator.log"
        with log.open("ab") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "tradewind.cli", "operator"],
                env=self.operator_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # with --keep it outlives the demo
            )
        self.console.print(f"  operator: started (pid {self.operator.pid}, log {log})", style="dim")

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def down(self) -> None:
        self.stop_operator()
        self.stack.down(log=lambda line: self.console.print(f"  {line}", style="dim"))

    def apply(self) -> str:
        """Apply the manifest as a fresh run (a previous demo run of that name and its
        checkpoints are removed first). Returns the run's name."""
        doc = yaml.safe_load(self.manifest.read_text())
        name = doc["metadata"]["name"]
        if self.kubectl("get", "trainingrun", name, "-n", NAMESPACE, "--ignore-not-found"):
            self.console.print(f"  replacing the previous run {name} (and its checkpoints)")
            self.kubectl("delete", "trainingrun", name, "-n", NAMESPACE, "--wait=true")
            self._delete_checkpoints(name)
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(self.manifest))
        self.console.print(f"[bold]applied[/bold] {self.manifest} -> trainingrun/{name}")
        return str(name)

    def _delete_checkpoints(self, name: str) -> None:
        from tradewind.trainer.storage import s3_client_from_env

        client = s3_client_from_env(self.stack.env())
        prefix = f"{NAMESPACE}/{name}/"
        for obj in client.list_objects("tradewind", prefix=prefix, recursive=True):
            if obj.object_name:
                client.remove_object("tradewind", obj.object_name)

    def get_run(self, name: str) -> dict[str, Any]:
        text = self.kubectl("get", "trainingrun", name, "-n", NAMESPACE, "-o", "json")
        return dict(json.loads(text))

    def pods(self, name: str) -> list[dict[str, Any]]:
        text = self.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"tradewind.dev/run={name}", "-o", "json"
        )  # fmt: skip
        return list(json.loads(text)["items"])

    def watch(self, name: str, timeout: float) -> DemoResult:
        """Live status until the run succeeds or fails (or `timeout` seconds pass)."""
        start = time.monotonic()
        status: dict[str, Any] = {}
        with Live(console=self.console, refresh_per_second=2, transient=False) as live:
            while time.monotonic() - start < timeout:
                if self.operator is not None and self.operator.poll() is not None:
                    raise DemoError(
                        f"the operator exited (code {self.operator.returncode}); "
                        f"see {self.stack.dir / 'logs' / 'operator.log'}"
                    )
                with contextlib.suppress(DemoError):
                    status = self.get_run(name).get("status") or {}
                    live.update(self._view(name, status, self.pods(name), start))
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                time.sleep(1)
        return DemoResult(status, time.monotonic() - start)

    def _view(
        self, name: str, status: dict[str, Any], pods: list[dict[str, Any]], start: float
    ) -> Group:
        table = Table(title=f"trainingrun/{name}", title_justify="left")
        for column in ("phase", "nodes", "attempt", "epoch", "progress", "metric", "elapsed"):
            table.add_column(column)
        progress = status.get("progress") or {}
        epoch = progress.get("epoch")
        total = progress.get("totalEpochs")
        table.add_row(
            _phase(status.get("phase", "Pending")),
            f"{status.get('nodesReady', 0)}/{status.get('nodesTotal', '?')}",
            str(status.get("attempt", 0)),
            f"{epoch}/{total}" if epoch is not None else "-",
            f"{progress.get('percent', status.get('metrics', {}).get('progress', 0))}%",
            status.get("headlineMetric") or "-",
            f"{time.monotonic() - start:.0f}s",
        )
        pod_table = Table(show_edge=False, box=None, padding=(0, 2))
        for column in ("pod", "phase", "IP", "node"):
            pod_table.add_column(column, style="dim")
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            st = pod.get("status") or {}
            pod_table.add_row(
                pod["metadata"]["name"],
                st.get("phase", "-"),
                st.get("podIP", "-"),
                pod["spec"].get("nodeName", "-"),
            )
        message = next(
            (c.get("message", "") for c in status.get("conditions") or [] if c["type"] == "Ready"),
            "",
        )
        return Group(table, pod_table, Text(message, style="dim"))

    def report(self, name: str, result: DemoResult) -> None:
        status = result.status
        phase = status.get("phase")
        if phase != "Succeeded":
            pods = self.pods(name)
            hint = ", ".join(f"tradewind logs {p['metadata']['name']}" for p in pods[:2])
            raise DemoError(
                f"trainingrun/{name} is {phase or 'not finished'} after {result.seconds:.0f}s: "
                f"{_condition_message(status)}; pod logs: {hint or 'no pods'}"
            )
        checkpoint = status.get("checkpoint") or {}
        mlflow = status.get("mlflow") or {}
        self.console.print(
            f"\n[green bold]Succeeded[/green bold] in {result.seconds:.0f}s "
            f"({status.get('nodesTotal', 2)} nodes, attempt {status.get('attempt', 0)})"
        )
        self.console.print(f"  checkpoint (MinIO): {checkpoint.get('latest', '-')}")
        self.console.print(f"  best checkpoint:    {checkpoint.get('best', '-')}")
        self.console.print(f"  MLflow run:         {mlflow.get('url', '-')}")
        metrics = {
            k: v for k, v in (status.get("metrics") or {}).items() if not k.startswith("system/")
        }
        table = Table(title="final metrics", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(metrics):
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)


def _phase(phase: str) -> str:
    color = {"Succeeded": "green", "Failed": "red", "Restarting": "yellow"}.get(phase, "cyan")
    return f"[{color}]{phase}[/{color}]"


def _condition_message(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition["type"] in ("Failed", "Ready") and condition.get("message"):
            return str(condition["message"])
    return "no message"


@contextlib.contextmanager
def _timed(console: Console, what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    console.print(f"  {what} in {time.monotonic() - start:.0f}s", style="dim")


def run_demo(
    directory: Path, manifest: Path, keep: bool, timeout: float, console: Console
) -> DemoResult:
    """The whole demo; raises DemoError (or StackError) with a one-line reason."""
    start = time.monotonic()
    demo = Demo(directory, manifest, console)
    try:
        with _timed(console, "stack and operator up"):
            demo.up()
        name = demo.apply()
        result = demo.watch(name, timeout)
        demo.report(name, result)
    except (DemoError, StackError):
        _stop(demo, keep, console)
        raise
    except KeyboardInterrupt:
        _stop(demo, keep, console)
        raise
    _stop(demo, keep, console)
    console.print(f"demo wall time: {time.monotonic() - start:.0f}s")
    return result


def _stop(demo: Demo, keep: bool, console: Console) -> None:
    d = demo.stack.dir
    if keep:
        console.print(
            f"\nThe stack and the operator keep running. Explore it with "
            f'`eval "$(tradewind dev env --dir {d})"; kubectl get tradewind,pods`; '
            f"stop it with `kill {demo.operator.pid if demo.operator else ''}; "
            f"tradewind dev down --dir {d}`."
        )
        return
    console.print("stopping the operator and the stack (data kept; `--keep` leaves them up)")
    demo.down()
    console.print(f"stopped; `tradewind dev down --purge --dir {d}` also deletes its data")
