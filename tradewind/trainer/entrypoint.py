"""What runs in a pod (under torchrun) and behind `tradewind run -f`:
`python -m tradewind.trainer --config run.yaml`.

Exit codes tell the operator whether restarting can help: 0 success, 64 the spec cannot run
(bad configuration, or a setting this machine cannot run, such as fp16 without CUDA), 65 the
loss became NaN or infinite (a restart would diverge again), 66 the data is not there,
67 out of memory (MemoryError: the same run would run out again), anything else a failure
worth a restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tradewind.api import ManifestError, RLRun, TrainingRun, load_resources
from tradewind.api.identity import mlflow_tags

if TYPE_CHECKING:
    from tradewind.trainer.supervised import Result

EXIT_BAD_CONFIG = 64
EXIT_NON_FINITE_LOSS = 65
EXIT_DATA_NOT_FOUND = 66
EXIT_OUT_OF_MEMORY = 67
OUT_OF_MEMORY_HINT = "give the pods more memory (resources) or the run less data or batch"
TERMINATION_LOG = Path("/dev/termination-log")
"""Kubernetes' default terminationMessagePath: what is written there becomes the message of
the container's terminated state, which the operator puts in the run's status."""


class SpecNotRunnableError(ValueError):
    """A valid spec that cannot run here, e.g. precision fp16 without a CUDA device (exit 64)."""


class NonFiniteLossError(ArithmeticError):
    """A training or validation loss became NaN or infinite. Resuming from the latest
    checkpoint would diverge the same way, so the run fails for good (exit 65)."""


log = logging.getLogger("tradewind.trainer")


def checkpoint_uri(run: TrainingRun | RLRun, state_dir: Path) -> str:
    """The run's checkpoint prefix. In a cluster, `<spec.checkpoint.storage>/<uid>`, or
    without one `<TRADEWIND_CHECKPOINT_URI>/<namespace>/<name>/<uid>` (TRADEWIND_RUN_UID: a
    run re-created under the same name starts afresh unless its resumeFrom names the old
    prefix, and a Sweep's trials never share one). Outside one, `spec.checkpoint.storage` as
    written, else a folder per name under the local state folder (`tradewind run -f`
    resumes a manifest by its name)."""
    uid = os.environ.get("TRADEWIND_RUN_UID")
    storage, base = run.spec.checkpoint.storage, os.environ.get("TRADEWIND_CHECKPOINT_URI")
    if storage:
        prefix = storage.rstrip("/")
    elif base is not None:
        prefix = f"{base.rstrip('/')}/{run.metadata.namespace or 'default'}/{run.metadata.name}"
    else:
        return (state_dir / "checkpoints" / run.metadata.name).resolve().as_uri()
    return f"{prefix}/{uid}" if uid else prefix


def train(
    run: TrainingRun,
    state_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Result:
    """Train one TrainingRun in this process (one rank of a torchrun job, or alone)."""
    import mlflow
    import torch

    from tradewind.trainer.checkpoint import Checkpointer
    from tradewind.trainer.distributed import init_distributed, teardown
    from tradewind.trainer.storage import open_store
    from tradewind.trainer.supervised import SupervisedTrainer, check_precision
    from tradewind.trainer.tracking import Tracker, default_tracking_uri, tensorboard_dir
    from tradewind.trainer.wandb_run import wandb_run

    check_precision(run.spec.training, cuda=torch.cuda.is_available())
    env = init_distributed(run.spec.device)
    try:
        checkpointer = Checkpointer(
            open_store(checkpoint_uri(run, state_dir)), run.spec.checkpoint.keep_last
        )
        mlflow.set_tracking_uri(default_tracking_uri(state_dir))
        tracking = run.spec.tracking
        run_name = tracking.run_name or run.metadata.name
        tracker = Tracker(
            enabled=env.is_main,
            tensorboard_dir=tensorboard_dir(state_dir, run_name, tracking.tensorboard),
            wandb=wandb_run(tracking.wandb, state_dir, run_name, run.metadata),
        )
        trainer = SupervisedTrainer(run, env, checkpointer, tracker)
        trainer.resume()
        tracker.start(
            experiment=tracking.experiment,
            run_name=run_name,
            tags=mlflow_tags(run),
            params=run.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            resume_run_id=trainer.state.mlflow_run_id,
            system_metrics=tracking.system_metrics and env.is_main,
        )  # fmt: skip
        trainer.state.mlflow_run_id = tracker.run_id
        try:
            result = trainer.fit(on_epoch=on_epoch if env.is_main else None)
        except BaseException:
            tracker.end("FAILED")
            raise
        if env.is_main:
            result.folds, pooled = _retraining_evaluations(run, trainer, tracker)
            if pooled:
                tracker.metrics(pooled, step=trainer.state.epoch)
                result.metrics |= pooled
            example = trainer.example_input()
            logits = trainer.predict_logits(example)
            tracker.graph(trainer.model, example)
            tracker.model(trainer.model, tracking.register_model, example, logits)
        tracker.end()
        return result
    finally:
        teardown()


def _retraining_evaluations(
    run: TrainingRun, trainer: Any, tracker: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """Cross-validation and walk-forward retraining (rank 0, one process), logged as tables;
    and their pooled rows as metrics."""
    import dataclasses

    from tradewind.trainer.folds import evaluate_folds, pooled_metrics

    local = dataclasses.replace(trainer.env, rank=0, world_size=1)
    tables = evaluate_folds(run, trainer.data, local)
    for name, rows in tables.items():
        tracker.table(rows, f"{name}.json")
    return tables, pooled_metrics(tables)


def fail_permanently(code: int, message: str) -> int:
    """Say why the run cannot go on, on stderr and (in a pod) as the container's termination
    message, for the run's status; returns `code`, the exit code that says it is permanent."""
    print(message, file=sys.stderr)
    if TERMINATION_LOG.exists():
        try:
            TERMINATION_LOG.write_text(message[:4000])
        except OSError as exc:
            log.warning("cannot write the termination message: %s", exc)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradewind.trainer", description=__doc__)
    parser.add_argument(
        "--config", type=Path, required=True, help="Manifest holding one TrainingRun."
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("TRADEWIND_STATE_DIR", ".tradewind"))
    )
    parser.add_argument(
        "--result", type=Path, help="Write the final metrics here as JSON (rank 0)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from tradewind.extensions import validation_context

    try:
        resources = load_resources(args.config, validation_context())
    except (ManifestError, ValueError) as exc:
        return fail_permanently(EXIT_BAD_CONFIG, f"error: {exc}")
    if len(resources) != 1:
        print(
            f"error: {args.config}: holds {len(resources)} resources; expected one", file=sys.stderr
        )
        return EXIT_BAD_CONFIG
    (run,) = resources
    if not isinstance(run, TrainingRun):
        print(f"error: {args.config}: expected a TrainingRun, got {run.kind}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    from tradewind.trainer.checkpoint import CheckpointError
    from tradewind.trainer.data.errors import DataError

    try:
        result = train(run, args.state_dir)
    except SpecNotRunnableError as exc:
        return fail_permanently(EXIT_BAD_CONFIG, f"error: {exc}")
    except NonFiniteLossError as exc:
        return fail_permanently(EXIT_NON_FINITE_LOSS, f"error: {exc}")
    except DataError as exc:
        return fail_permanently(EXIT_DATA_NOT_FOUND, f"error: data: {exc}")
    except CheckpointError as exc:  # corrupt or holding objects the loader refuses: for good
        return fail_permanently(EXIT_BAD_CONFIG, f"error: checkpoint: {exc}")
    except MemoryError:
        return fail_permanently(EXIT_OUT_OF_MEMORY, f"error: out of memory: {OUT_OF_MEMORY_HINT}")
    if args.result is not None and int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(result.__dict__, indent=2, default=str))
    return 0
