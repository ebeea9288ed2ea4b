"""What runs in a pod (under torchrun) and behind `tradewind run -f`:
`python -m tradewind.trainer --config run.yaml`.

Exit codes tell the operator whether restarting can help: 0 success, 64 the spec cannot run
(bad configuration), 66 the data is not there, anything else a failure worth a restart.
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

from tradewind.api import ManifestError, TrainingRun, load_resources

if TYPE_CHECKING:
    from tradewind.trainer.supervised import Result

EXIT_BAD_CONFIG = 64
EXIT_DATA_NOT_FOUND = 66

log = logging.getLogger("tradewind.trainer")


def checkpoint_uri(run: TrainingRun, state_dir: Path) -> str:
    """spec.checkpoint.storage, else the operator's default (TRADEWIND_CHECKPOINT_URI),
    else a folder under the local state folder; always one prefix per run."""
    base = run.spec.checkpoint.storage or os.environ.get("TRADEWIND_CHECKPOINT_URI")
    if base is None:
        return (state_dir / "checkpoints" / run.metadata.name).resolve().as_uri()
    return (
        base
        if run.spec.checkpoint.storage
        else f"{base.rstrip('/')}/{run.metadata.namespace or 'default'}/{run.metadata.name}"
    )


def train(
    run: TrainingRun,
    state_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Result:
    """Train one TrainingRun in this process (one rank of a torchrun job, or alone)."""
    import mlflow

    from tradewind.trainer.checkpoint import Checkpointer
    from tradewind.trainer.distributed import init_distributed, teardown
    from tradewind.trainer.storage import open_store
    from tradewind.trainer.supervised import SupervisedTrainer
    from tradewind.trainer.tracking import Tracker, default_tracking_uri

    env = init_distributed(run.spec.device)
    try:
        checkpointer = Checkpointer(
            open_store(checkpoint_uri(run, state_dir)), run.spec.checkpoint.keep_last
        )
        mlflow.set_tracking_uri(default_tracking_uri(state_dir))
        tracker = Tracker(enabled=env.is_main)
        trainer = SupervisedTrainer(run, env, checkpointer, tracker)
        trainer.resume()
        tracking = run.spec.tracking
        tracker.start(
            experiment=tracking.experiment,
            run_name=tracking.run_name or run.metadata.name,
            tags={"tradewind.kind": "TrainingRun", "tradewind.name": run.metadata.name,
                  "tradewind.namespace": run.metadata.namespace or "", **tracking.tags},
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
            result.folds = _retraining_evaluations(run, trainer, tracker)
            example = trainer.example_input()
            logits = trainer.predict_logits(example)
            tracker.model(trainer.model, tracking.register_model, example, logits)
        tracker.end()
        return result
    finally:
        teardown()


def _retraining_evaluations(run: TrainingRun, trainer: Any, tracker: Any) -> dict[str, Any]:
    """Cross-validation and walk-forward retraining (rank 0, one process), logged as tables."""
    import dataclasses

    from tradewind.trainer.folds import evaluate_folds

    local = dataclasses.replace(trainer.env, rank=0, world_size=1)
    tables = evaluate_folds(run, trainer.data, local)
    for name, rows in tables.items():
        tracker.table(rows, f"{name}.json")
    return tables


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
    try:
        resources = load_resources(args.config)
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if len(resources) != 1:
        print(
            f"error: {args.config}: holds {len(resources)} resources; expected one", file=sys.stderr
        )
        return EXIT_BAD_CONFIG
    (run,) = resources
    if not isinstance(run, TrainingRun):
        print(f"error: {args.config}: expected a TrainingRun, got {run.kind}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    from tradewind.trainer.data.errors import DataError

    try:
        result = train(run, args.state_dir)
    except DataError as exc:
        print(f"error: data: {exc}", file=sys.stderr)
        return EXIT_DATA_NOT_FOUND
    if args.result is not None and int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(result.__dict__, indent=2, default=str))
    return 0
