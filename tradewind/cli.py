"""The `tradewind` command. Subcommands import what they need lazily, so `validate` and
`crds` start fast and work without torch or kopf installed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from tradewind.devstack import DevStack

app = typer.Typer(
    name="tradewind",
    help="Train trading models on Kubernetes from TrainingRun, RLRun and Sweep manifests — or "
    "run the same manifest on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs reflow to the terminal's width
)
out = Console()
err = Console(stderr=True)

ManifestOption = Annotated[
    list[Path],
    typer.Option(
        "--filename",
        "-f",
        help="Manifest file or folder of *.yaml holding TrainingRun, RLRun or Sweep documents "
        "('-' reads stdin). Repeatable.",
    ),
]


def _fail(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@app.command()
def validate(
    filename: ManifestOption,
    show: Annotated[
        bool, typer.Option("--show", help="Print each resource with every default filled in.")
    ] = False,
) -> None:
    """Check manifests against the Tradewind API, exactly as the cluster would.

    The extensions they name (`<package>.<name>`) are checked against the packages
    installed here.

    Every problem is printed on one line naming the field path and what is allowed; the
    exit code is 1 if any manifest is invalid.
    """
    from tradewind.api import ManifestError, dump_resource, load_resources
    from tradewind.extensions import validation_context

    problems: list[str] = []
    paths = [p for f in filename for p in (sorted(f.glob("*.yaml")) if f.is_dir() else [f])]
    for path in paths:
        try:
            resources = load_resources(path, validation_context())
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        for res in resources:
            out.print(f"[green]valid[/green] {escape(str(path))}: {res.kind}/{res.metadata.name}")
            if show:
                out.print(dump_resource(res, full=True), markup=False, soft_wrap=True)
    if problems:
        _fail(problems)


@app.command()
def crds(
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Folder to write the CRD manifests to.")
    ] = Path("crds"),
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; exit 1 if the folder differs from the models."
        ),
    ] = False,
) -> None:
    """Generate the CustomResourceDefinitions from the API models into crds/."""
    from tradewind.api.crd import render_crds, write_crds

    if check:
        stale = [
            name
            for name, text in render_crds().items()
            if not (output_dir / name).is_file() or (output_dir / name).read_text() != text
        ]
        if stale:
            _fail([f"{output_dir / n} is stale; run `tradewind crds`" for n in stale])
        out.print(f"{output_dir} is up to date")
        return
    for path in write_crds(output_dir):
        out.print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


@app.command("run")
def run_manifest(
    filename: Annotated[
        Path,
        typer.Option("--filename", "-f", help="Manifest with one TrainingRun, RLRun or Sweep."),
    ],
    nodes: Annotated[
        int | None, typer.Option(min=1, max=64, help="Override spec.nodes (local ranks).")
    ] = None,
    procs_per_node: Annotated[
        int | None, typer.Option(min=1, max=64, help="Override spec.procsPerNode.")
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="Local checkpoints and MLflow store of runs.")
    ] = Path(".tradewind"),
) -> None:
    """Run a manifest on this machine, exactly as the cluster would run it.

    Checkpoints: STATE_DIR/checkpoints/NAME unless the spec sets checkpoint.storage.

    MLflow: $MLFLOW_TRACKING_URI, else a SQLite store in STATE_DIR.

    Re-running resumes from the latest checkpoint.

    With nodes x procsPerNode > 1 it launches torchrun with that many local processes (gloo).

    A Sweep runs its trials as local processes, parallelism at a time, with a live table.

    Its pruner stops trials from the metrics they log; the best parameters are printed last.

    A Sweep's Optuna study is in STATE_DIR/sweeps/NAME: re-running continues it.
    """
    resource = _one_resource(filename, "run")
    try:
        _run_here(resource, nodes, procs_per_node, state_dir, filename)
    except (ValueError, ArithmeticError) as exc:
        from tradewind.trainer.data.errors import DataError
        from tradewind.trainer.entrypoint import NonFiniteLossError, SpecNotRunnableError

        if isinstance(exc, DataError | NonFiniteLossError | SpecNotRunnableError):
            _fail([f"{filename}: {exc}"])
        raise


def _one_resource(filename: Path, command: str) -> Any:
    """The one resource of a manifest, or one clear line per problem and exit 1."""
    from tradewind.api import ManifestError, load_resources
    from tradewind.extensions import validation_context

    try:
        resources = load_resources(filename, validation_context())
    except ManifestError as exc:
        _fail(exc.problems)
    if len(resources) != 1:
        _fail([f"{filename}: holds {len(resources)} resources; tradewind {command} takes one"])
    return resources[0]


def _run_here(
    resource: Any, nodes: int | None, procs_per_node: int | None, state_dir: Path, filename: Path
) -> None:
    from tradewind import local_run
    from tradewind.api import RLRun, Sweep, TrainingRun

    if isinstance(resource, RLRun):
        local_run.run_rl(resource, state_dir, out)
        local_run.print_tracking_folders(resource, state_dir, out)
        return
    if isinstance(resource, Sweep):
        from tradewind.sweeps.local import run_sweep

        if not run_sweep(resource, state_dir, out).succeeded:
            raise typer.Exit(1)
        return
    if not isinstance(resource, TrainingRun):
        _fail([f"{filename}: tradewind run does not run {resource.kind} yet"])
    assert isinstance(resource, TrainingRun)

    run = local_run.with_overrides(resource, nodes, procs_per_node)
    if run.spec.entrypoint is not None:  # your own code
        code = local_run.run_own_code(run, state_dir, out)
        local_run.print_tracking_folders(run, state_dir, out)
        if code:
            raise typer.Exit(code)
        return
    processes = run.spec.nodes * run.spec.procs_per_node
    if processes > 1:
        result = local_run.run_training_torchrun(run, state_dir, processes, out)
    else:
        result = local_run.run_training(run, state_dir, out)
    local_run.print_summary(result, out)
    local_run.print_tracking_folders(run, state_dir, out)


@app.command("placebo")
def placebo(
    filename: Annotated[
        Path,
        typer.Option("--filename", "-f", help="Manifest with one TrainingRun, RLRun or Sweep."),
    ],
    market: Annotated[
        list[str] | None,
        typer.Option(
            "--market",
            "-m",
            help="Placebo market(s) to run: random_walk, reversal, planted_edge. "
            "[default: all three]",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated markets.")] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Run each market under this many seeds (markets SEED, SEED+1, ...; the "
            "manifest's own seed shifted alike) and judge each path on their PSRs combined "
            "(Stouffer): finds a weak edge that one short run misses, and a no-edge market "
            "still shows a false edge only 5% of the time. Takes SEEDS times as long.",
        ),
    ] = 1,
    state_dir: Annotated[
        Path, typer.Option(help="Checkpoints and MLflow store (under STATE_DIR/placebo/).")
    ] = Path(".tradewind"),
) -> None:
    """Check that a manifest's evaluation shows an edge only where there is one.

    Runs the manifest, as `tradewind run -f` would, on generated markets matched to its data
    (same symbols, timestamps and volatility): a random walk and a bar-level reversal, where
    nothing is tradable at the next bar, and a planted edge that is. Every evaluation path it
    has (the test backtest; retrained walk-forward and CV, pooled; each RL agent and the
    ensemble; a Sweep's best trial by its Deflated Sharpe Ratio) is judged: edge when
    PSR >= 0.95; with --seeds N, on the N runs' PSRs combined.

    Exits 1 when a path shows a false edge or misses the planted one.
    """
    from tradewind import placebo as pb
    from tradewind.trainer.data.placebo import PLACEBO_KINDS

    kinds = market or list(PLACEBO_KINDS)
    unknown = [k for k in kinds if k not in PLACEBO_KINDS]
    if unknown:
        _fail([f"--market {unknown[0]}: one of {', '.join(PLACEBO_KINDS)}"])
    resource = _one_resource(filename, "placebo")
    verdicts = pb.check(resource, kinds, state_dir, out, seed=seed, seeds=seeds)
    out.print(pb.results_table(verdicts))
    if not all(v.ok for v in verdicts):
        if seeds == 1 and any(v.expected_edge and not v.shows_edge for v in verdicts):
            out.print(
                "A missed edge under one seed may be a short run's luck: --seeds 3 judges "
                "three runs together."
            )
        raise typer.Exit(1)


rl_app = typer.Typer(
    help="Reinforcement-learning tools for RLRuns.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(rl_app, name="rl")


@rl_app.command("grid-search")
def rl_grid_search(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="Manifest with one RLRun.")],
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            "-p",
            help="NAME=V1,V2,... : a hyperparameter (rl-zoo3/SB3 name) and its values. "
            "Repeatable; every combination is tried. Lists in brackets: net_arch=[64,64],[32].",
        ),
    ],
    agent: Annotated[
        str | None, typer.Option(help="Agent to search (needed when the run has several).")
    ] = None,
    timesteps: Annotated[
        int | None,
        typer.Option(min=1, help="Timesteps per combination. [default: spec.totalTimesteps]"),
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, max=100, help="Seeds per combination (scores averaged).")
    ] = 1,
    score: Annotated[
        str,
        typer.Option(
            help="Rank by sharpe, total_return or eval_mean_reward, on the validation bars."
        ),
    ] = "sharpe",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the results as JSON.")
    ] = None,
) -> None:
    """Train a small hyperparameter grid here, briefly, and rank it on validation bars.

    Every combination is ranked on the run's validation bars (eval.split) after costs; each
    row's figures on the test bars (eval.test), never used to rank, are printed beside, and
    the best's after the table (a Sweep does large searches in the cluster).

    Example: tradewind rl grid-search -f rlrun.yaml --agent ppo
    --param learning_rate=1e-4,3e-4 --param gamma=0.95,0.99 --timesteps 20000
    """
    import json

    import yaml

    from tradewind.api import ManifestError, RLRun, load_resources
    from tradewind.extensions import validation_context

    try:
        resources = load_resources(filename, validation_context())
    except ManifestError as exc:
        _fail(exc.problems)
    if len(resources) != 1 or not isinstance(resources[0], RLRun):
        _fail([f"{filename}: expected one RLRun"])
    run = resources[0]
    assert isinstance(run, RLRun)
    from tradewind.trainer.rl import grid_search as gs

    def report(i: int, n: int, row: dict[str, Any]) -> None:
        out.print(gs.trial_line(i, n, row, score), highlight=False)

    try:
        grid = gs.parse_grid(param)
        result = gs.grid_search(run.spec, grid, agent, timesteps, seeds, score, on_trial=report)
    except gs.GridError as exc:
        _fail([str(exc)])
    out.print(gs.result_table(result))
    out.print(gs.best_summary(result), highlight=False)
    out.print("best hyperparameters (add to the agent in the RLRun):", highlight=False)
    best = yaml.safe_dump(
        {"hyperparameters": result.best}, sort_keys=False, default_flow_style=None
    )
    out.print(best, markup=False)
    if output is not None:
        output.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        out.print(f"wrote {output}", highlight=False)


dev_app = typer.Typer(
    help="A local Kubernetes control plane (fake GPU nodes), MinIO and MLflow on 127.0.0.1, "
    "built from package registries and cached by version.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(dev_app, name="dev")

DevDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Stack folder (state, logs, kubeconfig). "
        "[default: $TRADEWIND_DEV_DIR or ~/.tradewind/dev]",
    ),
]


def _stack(directory: Path | None, **config: object) -> DevStack:
    from tradewind.devstack import DevStack, StackConfig, default_dev_dir

    return DevStack(StackConfig(dev_dir=directory or default_dev_dir(), **config))  # type: ignore[arg-type]


@dev_app.command("up")
def dev_up(
    directory: DevDir = None,
    nodes: Annotated[
        int | None,
        typer.Option(min=0, max=500, help="Fake GPU nodes.  [default: 4, 0 with --real-node]"),
    ] = None,
    gpus_per_node: Annotated[int, typer.Option(min=0, max=64, help="nvidia.com/gpu per node.")] = 8,
    gpu_pool: Annotated[
        str, typer.Option(help="Value of the tradewind.dev/gpu-pool node label.")
    ] = "a100",
    mlflow: Annotated[bool, typer.Option(help="Start the MLflow server too.")] = True,
    profiling: Annotated[
        bool,
        typer.Option(
            help="Serve Go's /debug/pprof on the apiserver, controller-manager and scheduler "
            "(bench/operator_scale.py --profile-apiserver uses it)."
        ),
    ] = False,
    kueue: Annotated[
        bool,
        typer.Option(
            help="Also run the Kueue controller (built by hack/build-binaries.sh) with its "
            "CRDs; see docs/kueue.md."
        ),
    ] = False,
    real_node: Annotated[
        bool,
        typer.Option(
            help="Also run a real node (as root): kubelet, containerd, runc, CNI, CoreDNS, "
            "kube-proxy; see docs/real-node.md."
        ),
    ] = False,
    node_registry: Annotated[
        list[str] | None,
        typer.Option(
            help="HOST:PORT of a local registry the real node pulls from over plain http "
            "(repeatable)."
        ),
    ] = None,
    registry: Annotated[
        bool,
        typer.Option(
            help="Also run an image registry with a login on 127.0.0.1 (the real node pulls "
            "from it with pull secrets); see docs/images.md."
        ),
    ] = False,
) -> None:
    """Start the stack (idempotent: healthy parts are kept). Prints how to point kubectl at it."""
    from tradewind.devstack import StackError

    stack = _stack(
        directory,
        nodes=nodes if nodes is not None else 0 if real_node else 4,
        gpus_per_node=gpus_per_node,
        gpu_pool=gpu_pool,
        with_mlflow=mlflow,
        profiling=profiling,
        kueue=kueue,
        real_node=real_node,
        node_registries=tuple(node_registry or ()),
        registry=registry,
    )
    try:
        stack.up(log=lambda line: out.print(line, markup=False, highlight=False))
    except StackError as exc:
        _fail([str(exc)])


@dev_app.command("down")
def dev_down(
    directory: DevDir = None,
    purge: Annotated[
        bool, typer.Option(help="Also delete the stack's data, logs and certificates.")
    ] = False,
) -> None:
    """Stop every process of the stack."""
    stack = _stack(directory)
    if purge:
        stack.destroy()
        out.print(f"stopped and removed {stack.dir}", markup=False)
    else:
        stack.down(log=lambda line: out.print(line, markup=False))


@dev_app.command("status")
def dev_status(directory: DevDir = None) -> None:
    """Show each component's state; exit code 1 unless all run."""
    stack = _stack(directory)
    states = stack.status()
    for name, state in states.items():
        color = {"running": "green", "unhealthy": "yellow"}.get(state, "red")
        out.print(f"{name:<24} [{color}]{state}[/{color}]")
    if any(s != "running" for s in states.values()):
        raise typer.Exit(code=1)


@dev_app.command("env")
def dev_env(directory: DevDir = None) -> None:
    """Print `export` lines for KUBECONFIG, MinIO (AWS_*) and MLflow.

    Use: eval "$(tradewind dev env)"
    """
    stack = _stack(directory)
    for key, value in (stack.env() | stack.pod_endpoints()).items():
        print(f"export {key}={value}")


store_app = typer.Typer(
    help="The object store's tenants: one user per namespace, limited to its own prefix.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(store_app, name="store")


@store_app.command("provision")
def store_provision(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Namespace to give a user with fresh keys (repeatable)."
        ),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of <namespace>.access-key / <namespace>.secret-key files: provision "
            "those users with those keys (the chart's MinIO sidecar)."
        ),
    ] = None,
    bucket: Annotated[str, typer.Option(help="The checkpoint bucket.")] = "tradewind",
    secret_name: Annotated[
        str,
        typer.Option(help="Name of the printed Secrets (the operator's credentialsSecret)."),
    ] = "tradewind-s3-credentials",
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for MinIO's admin API to answer.")
    ] = 0,
    every: Annotated[
        float,
        typer.Option(
            min=0,
            help="Provision again every this many seconds, re-reading --keys-dir (the chart's "
            "sidecar: a MinIO restarted without persistence gets its users back); 0: once.",
        ),
    ] = 0,
) -> None:
    """Create (or update) a MinIO user per namespace, limited to s3://BUCKET/NAMESPACE/*.

    The admin is whoever AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY name (MinIO's root). With --namespace, prints each namespace's
    credentials Secret as YAML, for `kubectl apply -f -`.
    """
    import os
    import time

    import yaml

    from tradewind.storage_tenants import ProvisionError, new_tenant, provision_all
    from tradewind.storage_tenants import tenants_from_folder as from_folder

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("TRADEWIND_S3_ENDPOINT")
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (endpoint and access and secret):
        _fail(["set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (MinIO's root)"])
        return
    fresh = [new_tenant(ns) for ns in namespace or []]
    while True:
        try:
            given = from_folder(keys_dir) if keys_dir else []
            done = provision_all(endpoint, access, secret, bucket, given + fresh, wait)
            for ns in done:
                err.print(f"provisioned {ns}: s3://{bucket}/{ns}/", markup=False, highlight=False)
        except ProvisionError as exc:
            if not every:
                _fail([str(exc)])
            err.print(f"error: {exc}", markup=False, highlight=False)
        if not every:
            break
        time.sleep(every)
    docs = [t.secret_manifest(secret_name) for t in fresh]
    if docs:
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="The demo stack's folder.  [default: ~/.tradewind/demo]"),
    ] = None,
    filename: Annotated[
        Path | None,
        typer.Option(
            "--filename",
            "-f",
            help="TrainingRun to apply.  [default: examples/trainingrun-quickstart-2node.yaml]",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Leave the stack and the operator running afterwards.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800,
) -> None:
    """The whole loop here: stack, operator and a 2-node TrainingRun that really trains.

    Starts the dev stack with a node whose pods really run, and the operator; applies the
    2-node quickstart TrainingRun (torchrun across two network namespaces) and shows live
    status until it succeeds; then prints its checkpoint in MinIO, its MLflow run and the
    final metrics. Needs root. A second run reuses every cache.
    """
    from tradewind.demo import DEFAULT_MANIFEST, DemoError, default_demo_dir, run_demo
    from tradewind.devstack import StackError

    try:
        run_demo(directory or default_demo_dir(), filename or DEFAULT_MANIFEST, keep, timeout, out)
    except (DemoError, StackError) as exc:
        _fail([str(exc)])
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


@app.command()
def logs(
    pod: Annotated[str, typer.Argument(help="Pod name (or a unique prefix of one).")],
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    container: Annotated[str, typer.Option("--container", "-c")] = "trainer",
    directory: DevDir = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """Print the log of a pod on the real node of a dev stack: `kubectl logs` for it.

    The stack is one started by `tradewind dev up --real-node` or `tradewind demo`; DIR
    defaults to the dev stack, else the demo's.
    """
    import subprocess

    from tradewind.demo import default_demo_dir
    from tradewind.devstack import DevStack, StackConfig, default_dev_dir

    dirs = [directory] if directory else [default_dev_dir(), default_demo_dir()]
    for d in dirs:
        stack = DevStack(StackConfig(dev_dir=d))
        if stack.with_real_node and stack.kubeconfig.is_file():
            kubectl = [str(stack.bin / "kubectl"), "--kubeconfig", str(stack.kubeconfig)]
            listed = subprocess.run(
                [*kubectl, "get", "pods", "-n", namespace, "-o", "name"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if listed.returncode != 0:
                _fail([f"{d}: {listed.stderr.strip()}"])
            names = [n.removeprefix("pod/") for n in listed.stdout.split()]
            matches = [pod] if pod in names else [n for n in names if n.startswith(pod)]
            if len(matches) != 1:
                found = ", ".join(matches) if matches else "none"
                _fail([f"{pod!r} must name one pod in {namespace} (matching: {found})"])
            argv = [*kubectl, "logs", "-n", namespace, matches[0], "-c", container]
            argv += ["-f"] if follow else []
            raise typer.Exit(subprocess.run(argv, check=False).returncode)
    _fail([f"no stack with a real node in {', '.join(map(str, dirs))}"])


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace to watch (repeatable); none: TRADEWIND_NAMESPACES (a JSON list), "
            "else all.",
        ),
    ] = None,
    liveness: Annotated[
        str | None,
        typer.Option(
            help="Serve liveness/readiness at this URL, e.g. http://0.0.0.0:8080/healthz."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port at /metrics.")
    ] = None,
    json_logs: Annotated[bool, typer.Option(help="Log one JSON object per line.")] = False,
    verbose: Annotated[bool, typer.Option(help="Log every watch event and handler.")] = False,
    leader_election: Annotated[
        bool | None,
        typer.Option(
            help="Work only while holding the Lease (TRADEWIND_LEASE_*), so that replicas "
            "take turns; --no-leader-election works at once (one process only). "
            "Default: TRADEWIND_LEADER_ELECTION, on."
        ),
    ] = None,
) -> None:
    """Run the Tradewind operator: TrainingRuns and RLRuns into torchrun Jobs, Sweeps into trials.

    Uses the in-cluster service account, else $KUBECONFIG.

    Configuration: TRADEWIND_* variables (tradewind/operator/settings.py).
    """
    from tradewind.operator.loop import run_operator
    from tradewind.operator.settings import OperatorSettings

    namespaces = namespace or OperatorSettings().namespaces
    run_operator(namespaces, liveness, metrics_port, json_logs, verbose, leader_election)


@app.command()
def version() -> None:
    """Print Tradewind's version and the API version it serves."""
    from tradewind import __version__
    from tradewind.api import API_VERSION

    out.print(f"tradewind {__version__} (API {API_VERSION}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    app()
