"""`python -m tradewind.trainer.own_code --config RUN.yaml --state-dir DIR -- COMMAND...`:
a TrainingRun's own code (`spec.entrypoint`) under Tradewind's checkpoint and MLflow contract.

Before COMMAND (torchrun with the code, or the code alone) starts, the run's checkpoint
prefix is restored into a local folder, TRADEWIND_CHECKPOINT_DIR, and node 0 creates (or,
after a restart, resumes) the run's MLflow run with Tradewind's identity tags, so the
operator's status and a Sweep find it. While COMMAND runs and when it ends, changed files of
the folder go up to the prefix (`checkpoint_sync`). A `file://` checkpoint storage (and
`tradewind run -f`'s default, `.tradewind/checkpoints/<name>`) is used as the folder itself.
Exits with COMMAND's exit code. The variables are listed in docs/own-code.md.

Nothing here imports torch; mlflow only on node 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tradewind.api import ManifestError, TrainingRun, load_resources
from tradewind.api.identity import mlflow_tags
from tradewind.trainer.checkpoint_sync import FolderSync, SyncLoop
from tradewind.trainer.entrypoint import EXIT_BAD_CONFIG, checkpoint_uri, fail_permanently
from tradewind.trainer.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from tradewind.api.training import Entrypoint
    from tradewind.trainer.tracking import Tracker

log = logging.getLogger("tradewind.own_code")

MODULE = "tradewind.trainer.own_code"
LAUNCH = "tradewind.trainer.launch"
"""torchrun that exits with the failed rank's own exit code."""
TRACKED_TAGS = ("tradewind.", "mlflow.parentRunId")
"""Identity tags an MLflow run of this run is found again by, after a restart."""


# --- command lines ---------------------------------------------------------------------


def child_argv(
    entrypoint: Entrypoint, torchrun_flags: list[str], python: str = "python"
) -> list[str]:
    """What the wrapper starts: torchrun (`torchrun_flags`, then `-m module` or
    `--no-python command`) or, with launcher none, the code alone; then the args."""
    command = list(entrypoint.command or [])
    if entrypoint.launcher == "none":
        program = [python, "-m", entrypoint.module] if entrypoint.module else command
        return [*program, *entrypoint.args]
    target = ["-m", entrypoint.module] if entrypoint.module else ["--no-python", *command]
    return [python, "-m", LAUNCH, *torchrun_flags, *target, *entrypoint.args]


def wrapper_argv(
    config: str, state_dir: str, child: list[str], python: str = "python", local: bool = False
) -> list[str]:
    """The container's command: this module, the run's manifest and state folder, `child`."""
    flags = ["--config", config, "--state-dir", state_dir, *(["--local"] if local else [])]
    return [python, "-m", MODULE, *flags, "--", *child]


def local_argv(run: TrainingRun, manifest: Path, state_dir: Path) -> list[str]:
    """`tradewind run -f` (and a local Sweep's trial): nodes x procsPerNode processes of
    torchrun --standalone on this machine, whatever the launcher (each process gets the
    same RANK / WORLD_SIZE / MASTER_* variables a pod would)."""
    assert run.spec.entrypoint is not None
    entrypoint = run.spec.entrypoint.model_copy(update={"launcher": "torchrun"})
    processes = run.spec.nodes * run.spec.procs_per_node
    flags = ["--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]
    child = child_argv(entrypoint, flags, sys.executable)
    return wrapper_argv(str(manifest), str(state_dir), child, sys.executable, local=True)


# --- checkpoints -----------------------------------------------------------------------


def _folder_of(uri: str) -> Path | None:
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def prepare_checkpoints(run: TrainingRun, state_dir: Path) -> tuple[str, Path, FolderSync | None]:
    """(the run's checkpoint prefix, the folder the code uses, the sync of the two or None
    when the prefix is a folder already). The folder holds this run's checkpoints, or for
    `resumeFrom: <uri>` and none of its own yet, what is at that URI; `none` restores
    nothing."""
    uri = checkpoint_uri(run, state_dir)
    resume_from = run.spec.checkpoint.resume_from
    direct = _folder_of(uri)
    folder = direct if direct is not None else state_dir / "checkpoint-sync" / run.metadata.name
    folder.mkdir(parents=True, exist_ok=True)
    store: ObjectStore = open_store(uri)
    sync = FolderSync(store, folder)
    if direct is None and resume_from != "none":
        restored = sync.restore()
        log.info("restored %d checkpoint files from %s", len(restored), uri)
    if resume_from not in ("none", "latest") and not store.list(""):
        restored = sync.restore(open_store(resume_from))
        log.info("restored %d files from %s (resumeFrom)", len(restored), resume_from)
    return uri, folder, None if direct is not None else sync


# --- MLflow ----------------------------------------------------------------------------


def start_tracking(run: TrainingRun, state_dir: Path) -> Tracker:
    """The run's MLflow run, created or (found by its identity tags) resumed."""
    import mlflow

    from tradewind.trainer.tracking import TAG_UID, Tracker, default_tracking_uri, tensorboard_dir
    from tradewind.trainer.wandb_run import wandb_run

    uri = default_tracking_uri(state_dir)
    mlflow.set_tracking_uri(uri)
    tracking = run.spec.tracking
    tags = mlflow_tags(run)
    identity = {k: v for k, v in tags.items() if k.startswith(TRACKED_TAGS) and v}
    if uid := os.environ.get("TRADEWIND_RUN_UID"):
        identity[TAG_UID] = uid
    params = run.spec.model_dump(
        mode="json", by_alias=True, exclude_none=True,
        exclude={"data", "model", "training", "evaluation", "pod_template"},
    )  # fmt: skip
    run_name = tracking.run_name or run.metadata.name
    events = tensorboard_dir(state_dir, run_name, tracking.tensorboard)
    wandb = wandb_run(tracking.wandb, state_dir, run_name, run.metadata, by_own_code=True)
    tracker = Tracker(enabled=True, tensorboard_dir=events, wandb=wandb)
    tracker.start(
        experiment=tracking.experiment,
        run_name=run_name,
        tags=tags,
        params=params,
        resume_run_id=_existing_run(tracking.experiment, identity),
        # a local SQLite store takes one writer at a time: the code's
        system_metrics=tracking.system_metrics and not uri.startswith("sqlite:"),
    )
    return tracker


def _existing_run(experiment: str, identity: dict[str, str]) -> str | None:
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(identity.items()))
    runs = mlflow.search_runs(
        [found.experiment_id], filter_string=query, max_results=1,
        order_by=["attributes.start_time DESC"], output_format="list",
    )  # fmt: skip
    return str(runs[0].info.run_id) if runs else None


def _tag_checkpoint(tracker: Tracker, uri: str) -> Any:
    """After an upload: the run's MLflow tag naming where its checkpoints are (the
    operator shows it as status.checkpoint.latest)."""
    from tradewind.trainer.tracking import TAG_LATEST

    def tag(_: list[str]) -> None:
        from mlflow import MlflowClient

        try:
            MlflowClient().set_tag(str(tracker.run_id), TAG_LATEST, uri)
        except Exception as exc:  # MLflow down: the next upload tags it
            log.warning("cannot tag the MLflow run with the checkpoint prefix: %s", exc)

    return tag


# --- main ------------------------------------------------------------------------------


def child_env(
    run: TrainingRun,
    config: Path,
    checkpoints: tuple[str, Path],
    state_dir: Path,
    tracker: Tracker | None,
) -> dict[str, str]:
    """The code's environment: this one (the operator's: rendezvous, credentials) with the
    contract's variables; MLFLOW_RUN_ID on node 0 only."""
    from tradewind.trainer.tracking import default_tracking_uri

    uri, folder = checkpoints
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)
    env |= {
        "TRADEWIND_CHECKPOINT_DIR": str(folder.resolve()),
        "TRADEWIND_CHECKPOINT_URI": uri,
        "TRADEWIND_RUN_CONFIG": str(config.resolve()),
        "MLFLOW_TRACKING_URI": default_tracking_uri(state_dir),
        "MLFLOW_EXPERIMENT_NAME": run.spec.tracking.experiment,
        "PYTHONUNBUFFERED": "1",
    }
    if tracker is not None and tracker.run_id:
        env["MLFLOW_RUN_ID"] = tracker.run_id
    if tracker is not None and tracker.tensorboard_dir is not None:
        tracker.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        env["TRADEWIND_TENSORBOARD_DIR"] = str(tracker.tensorboard_dir.resolve())
    if tracker is not None and tracker.wandb is not None and tracker.run_id:
        env |= tracker.wandb.env(tracker.run_id)
    return env


def _load(config: Path) -> TrainingRun | str:
    try:
        resources = load_resources(config)
    except (ManifestError, ValueError) as exc:
        return f"error: {exc}"
    run = resources[0] if len(resources) == 1 else None
    if not isinstance(run, TrainingRun) or run.spec.entrypoint is None:
        return f"error: {config}: expected one TrainingRun with spec.entrypoint"
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="Manifest of the run.")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("TRADEWIND_STATE_DIR", ".tradewind"))
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="On this machine: `python` in the command is this interpreter (its bin folder "
        "first on PATH), as the image's is in a pod.",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then what to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run = _load(args.config)
    if isinstance(run, str):
        return fail_permanently(EXIT_BAD_CONFIG, run)
    if not command:
        return fail_permanently(EXIT_BAD_CONFIG, "error: no command after --")
    uri, folder, sync = prepare_checkpoints(run, args.state_dir)
    main_node = int(os.environ.get("PET_NODE_RANK") or 0) == 0
    tracker = start_tracking(run, args.state_dir) if main_node else None
    env = child_env(run, args.config, (uri, folder), args.state_dir, tracker)
    if args.local:
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    loop = None
    if sync is not None:
        on_upload = _tag_checkpoint(tracker, uri) if tracker is not None else None
        loop = SyncLoop(sync, on_upload=on_upload)
        loop.start()
    log.info("checkpoints: %s (%s); starting %s", folder, uri, " ".join(command))
    code = _run(command, env)
    if loop is not None and not loop.stop():
        log.error("the last checkpoint files were not uploaded to %s", uri)
    if tracker is not None:
        tracker.end("FINISHED" if code == 0 else "FAILED")
    return code


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run `command`, passing SIGTERM and SIGINT on to it; its exit code (128 + the signal
    when a signal ended it, as a shell reports it)."""
    proc = subprocess.Popen(command, env=env)

    def forward(signum: int, _: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
