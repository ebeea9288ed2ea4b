"""MLflow tracking from rank 0: the spec as params, metrics per step and epoch, plots, model.

The tracking server comes from MLFLOW_TRACKING_URI (set by the operator in a cluster);
`tradewind run` defaults to a SQLite store under .tradewind/. Credentials stay in the
environment and are never logged.

With `tracking.tensorboard`, the same metrics and figures, and the model's graph, are also
TensorBoard event files (torch.utils.tensorboard's writer) in a folder of the state dir,
logged to the MLflow run under `tensorboard/` when it ends. With `tracking.wandb`, the
parameters, metrics, figures and tables go to a W&B run too (`wandb_run`); an offline W&B
run's files are logged to the MLflow run under `wandb/` when it ends.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tradewind.trainer.wandb_run import ARTIFACTS as WANDB_ARTIFACTS
from tradewind.trainer.wandb_run import WandbRun

log = logging.getLogger(__name__)
TAG_LATEST = "tradewind.checkpoint.latest"
TAG_BEST = "tradewind.checkpoint.best"
TENSORBOARD_ARTIFACTS = "tensorboard"
"""The MLflow run's artifact folder of its TensorBoard event files."""
TAG_UID = "tradewind.uid"
"""The uid of the run's Kubernetes object (TRADEWIND_RUN_UID in its pods): a run re-created
under the same name is another MLflow run, and the operator reads progress by it."""


def flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`: the spec as MLflow params."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name] = str(value)[:6000]
    return out


class Tracker:
    """One MLflow run per resource; a restarted attempt continues the same run."""

    def __init__(
        self, enabled: bool, tensorboard_dir: Path | None = None, wandb: WandbRun | None = None
    ) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self.url: str | None = None
        self.tracking_uri: str | None = None
        self.tensorboard_dir = tensorboard_dir if enabled else None
        """Where TensorBoard event files are written (None: none are)."""
        self.wandb = wandb if enabled else None
        """The W&B run beside the MLflow run (None: none)."""
        self._writer: Any = None
        uploads = {TENSORBOARD_ARTIFACTS: self.tensorboard_dir}
        if self.wandb is not None and self.wandb.offline:
            uploads[WANDB_ARTIFACTS] = self.wandb.folder
        self._uploads = {name: (folder, _files(folder)) for name, folder in uploads.items()}
        """Folders whose files go to the MLflow run when it ends, by artifact folder, with
        their files before this run wrote any (an earlier run's: not logged)."""

    def _tensorboard(self) -> Any:
        if self._writer is None and self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir))
        return self._writer

    def start(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
        system_metrics: bool = False,
    ) -> None:
        if not self.enabled:
            return
        import mlflow

        uri = self.tracking_uri = mlflow.get_tracking_uri()
        if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
            # A local store keeps artifacts beside its database, not in ./mlruns of the CWD.
            root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment
            mlflow.create_experiment(experiment, artifact_location=root.resolve().as_uri())
        mlflow.set_experiment(experiment)
        uid = os.environ.get("TRADEWIND_RUN_UID")
        tags = {**tags, TAG_UID: uid} if uid else dict(tags)
        if resume_run_id and not _same_uid(resume_run_id, uid):
            log.info("MLflow run %s is another run's of this name: not resumed", resume_run_id)
            resume_run_id = None
        run = mlflow.start_run(
            run_id=resume_run_id,
            run_name=None if resume_run_id else run_name,
            tags=tags,
            log_system_metrics=system_metrics,
        )
        self.run_id = run.info.run_id
        if resume_run_id is None:
            flat = flatten(params)
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
                mlflow.log_params(dict(items[i : i + 100]))
        if uri.startswith("http"):
            self.url = (
                f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            )
        log.info("MLflow run %s (%s)", self.run_id, self.url or uri)
        if self.wandb is not None:
            self.wandb.start(self.run_id, params)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        if self.enabled and values:
            import mlflow

            mlflow.log_metrics(dict(values), step=step)
            if writer := self._tensorboard():
                for name, value in values.items():
                    writer.add_scalar(name, value, step)
            if self.wandb is not None:
                self.wandb.log(values, step)

    def tags(self, values: Mapping[str, str | None]) -> None:
        """Set run tags (the operator reads the checkpoint URIs from them)."""
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: v for k, v in values.items() if v})

    def figure(self, figure: Any, name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_figure(figure, name)
            if writer := self._tensorboard():
                writer.add_figure(Path(name).stem, figure, close=False)
            if self.wandb is not None:
                self.wandb.figure(figure, name)

    @property
    def has_step_viewer(self) -> bool:
        """Whether TensorBoard or W&B is on: viewers with a step slider, where figures drawn
        every epoch go (`step_figure`)."""
        return self.enabled and (self.tensorboard_dir is not None or self.wandb is not None)

    def step_figure(self, figure: Any, name: str, step: int) -> None:
        """A figure drawn at `step` (each epoch's attention: the guide's
        `log_attention_weights`), to TensorBoard and W&B; MLflow gets its figures once, at
        the end (`figure`)."""
        if not self.enabled:
            return
        if writer := self._tensorboard():
            writer.add_figure(Path(name).stem, figure, global_step=step, close=False)
        if self.wandb is not None:
            self.wandb.figure(figure, name, step)

    def graph(self, model: Any, example: Any, forward: Callable[[Any], Any] | None = None) -> None:
        """The model's graph, traced on `example` inputs (an array or tensor) through
        `forward` (default: calling the model), in the TensorBoard files (the guide's
        `log_model_graph`); a model the tracer cannot follow is logged, not raised."""
        writer = self._tensorboard() if self.enabled else None
        if writer is None:
            return
        import torch

        call = forward or model

        class Traced(torch.nn.Module):
            """The model with its output (a ModelOutput, a tensor or a tuple) as a tuple of
            tensors: what the tracer takes."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                out = call(x)
                if isinstance(out, torch.Tensor):
                    return (out,)
                values = out if isinstance(out, tuple | list) else vars(out).values()
                return tuple(v for v in values if isinstance(v, torch.Tensor))

        training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():  # torch.jit.trace's deprecation notices
                warnings.simplefilter("ignore")
                x = torch.as_tensor(example).to(next(model.parameters()).device)
                # traced here without the re-trace check: the models' graphs are the same
                # each time but for the order of their constants, which the check flags
                traced = torch.jit.trace(Traced(), x, check_trace=False)  # type: ignore[no-untyped-call]
                writer.add_graph(traced, x)
        except Exception as exc:  # the graph is an extra: the run goes on without it
            log.warning("could not trace the model's graph for TensorBoard: %s", exc)
        finally:
            model.train(training)

    def artifact(self, path: Path, directory: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), directory)

    def table(self, rows: list[dict[str, Any]], name: str) -> None:
        if self.enabled and rows:
            import mlflow

            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            mlflow.log_table(columns, name)
            if self.wandb is not None:
                self.wandb.table(rows, name)

    def model(self, model: Any, register_as: str | None, example: Any, logits: Any) -> None:
        """Log the model (and register it under `register_as`) with its signature: windows
        [batch, lookback, features] -> class logits."""
        if not self.enabled:
            return
        import mlflow.pytorch
        from mlflow.models import infer_signature

        mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=register_as,
            signature=infer_signature(example, logits),
            serialization_format="pickle",  # pt2 cannot trace the ModelOutput dataclass
        )

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            import mlflow

            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self.wandb is not None:
                self.wandb.finish(failed=status != "FINISHED")
            for name, (folder, before) in self._uploads.items():
                self._log_files(name, folder, before)
            mlflow.end_run(status=status)

    def _log_files(self, artifacts: str, folder: Path | None, before: dict[Path, int]) -> None:
        """The files under `folder` this run wrote (or own code's, new or changed since the
        tracker was made) to the MLflow run under `artifacts`; a failure to upload them is
        logged, not raised: the run's outcome does not depend on them."""
        written = [path for path, stamp in _files(folder).items() if before.get(path) != stamp]
        if folder is None or not written:
            return
        import mlflow

        try:
            for path in written:
                parent = path.relative_to(folder).parent.as_posix()
                where = artifacts if parent == "." else f"{artifacts}/{parent}"
                mlflow.log_artifact(str(path), where)
        except Exception as exc:  # any store error: the run goes on without them
            log.warning("could not log the files in %s to the MLflow run: %s", folder, exc)
        else:
            log.info("%s files logged to the MLflow run, %s/", folder, artifacts)


def _files(folder: Path | None) -> dict[Path, int]:
    """The files under `folder` and their modification times (ns)."""
    if folder is None or not folder.is_dir():
        return {}
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def tensorboard_dir(state_dir: Path, run_name: str, wanted: bool) -> Path | None:
    """The folder of a run's TensorBoard event files in its state dir (one per MLflow run:
    an RLRun's agents and ensemble each have theirs); None unless `tracking.tensorboard`."""
    return state_dir / "tensorboard" / run_name if wanted else None


def _same_uid(run_id: str, uid: str | None) -> bool:
    """Whether MLflow run `run_id` was started by the run of this uid (runs without the tag,
    or a trainer without a uid, e.g. `tradewind run -f`, match by name as before)."""
    import mlflow

    theirs = mlflow.get_run(run_id).data.tags.get(TAG_UID)
    return uid is None or theirs is None or theirs == uid


def default_tracking_uri(state_dir: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store in the local state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    state_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(state_dir / 'mlflow.db').resolve()}"
