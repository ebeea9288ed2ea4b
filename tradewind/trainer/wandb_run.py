"""`tracking.wandb`: a Weights & Biases run beside the MLflow run, fed by the Tracker.

Its id is the MLflow run's, so a restarted attempt (which resumes its MLflow run) resumes it
too. W&B is an extra: a W&B that cannot be reached, or no API key, costs a warning and the
W&B run, never the training run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradewind.api.common import WandbSpec
from tradewind.api.identity import SWEEP_LABEL
from tradewind.api.resources import ObjectMeta

log = logging.getLogger(__name__)
ARTIFACTS = "wandb"
"""The MLflow run's artifact folder of an offline W&B run's files."""


def wandb_run(
    spec: WandbSpec | None,
    state_dir: Path,
    run_name: str,
    metadata: ObjectMeta,
    *,
    by_own_code: bool = False,
) -> WandbRun | None:
    """The W&B run of MLflow run `run_name` of a resource with this `metadata`, its files in
    `<state dir>/wandb/<run name>/`; its group is `spec.group`, else the Sweep a trial belongs
    to, else the resource's name. None without `tracking.wandb`."""
    if spec is None:
        return None
    group = spec.group or (metadata.labels or {}).get(SWEEP_LABEL) or metadata.name
    folder = state_dir / "wandb" / run_name
    return WandbRun(spec, folder, run_name, group, by_own_code=by_own_code)


class WandbRun:
    """One W&B run: `start`, then `log` / `figure` / `table`, then `finish`. With
    `by_own_code` the run is the code's to start (with `env`): nothing is logged here."""

    def __init__(
        self, spec: WandbSpec, folder: Path, name: str, group: str, *, by_own_code: bool = False
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.name = name
        """The MLflow run's name."""
        self.group = group
        self.by_own_code = by_own_code
        self._run: Any = None
        self._step = 0
        """W&B refuses a step below the last one logged: later figures join the last."""

    @property
    def offline(self) -> bool:
        return self.spec.mode == "offline"

    def env(self, run_id: str) -> dict[str, str]:
        """The variables a bare `wandb.init()` in own code reads to join this W&B run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            "WANDB_PROJECT": self.spec.project,
            "WANDB_MODE": self.spec.mode,
            "WANDB_RUN_GROUP": self.group,
            "WANDB_NAME": self.name,
            "WANDB_RUN_ID": run_id,
            "WANDB_RESUME": "allow",
            "WANDB_DIR": str(self.folder.resolve()),
        }
        return env | ({"WANDB_ENTITY": self.spec.entity} if self.spec.entity else {})

    def start(self, run_id: str, config: Mapping[str, Any]) -> None:
        if self.by_own_code:
            return
        try:
            import wandb

            self.folder.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=self.spec.project,
                entity=self.spec.entity,
                mode=self.spec.mode,
                group=self.group,
                name=self.name,
                id=run_id,
                resume="allow",
                dir=str(self.folder),
                config=dict(config),
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:  # no key, no route, a refused project: MLflow only
            log.warning("W&B run not started (MLflow only): %s", exc)
            self._run = None
            return
        self._step = int(self._run.step or 0)
        where = self._run.url or f"offline, in {self.folder} (wandb sync)"
        log.info("W&B run %s (%s)", self._run.id, where)

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is None:
            return
        self._step = max(self._step, step if step is not None else self._step)
        self._run.log(dict(values), step=self._step)

    def figure(self, figure: Any, name: str, step: int | None = None) -> None:
        if self._run is not None:
            import wandb

            self.log({Path(name).stem: wandb.Image(figure)}, step)

    def table(self, rows: list[dict[str, Any]], name: str) -> None:
        if self._run is not None and rows:
            import wandb

            columns = list(rows[0])
            data = [[row.get(c) for c in columns] for row in rows]
            table = wandb.Table(columns=list[str | int](columns), data=data)
            self.log({Path(name).stem: table})

    def finish(self, failed: bool) -> None:
        if self._run is None:
            return
        try:
            self._run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # the upload failed: the training run's outcome stands
            log.warning("W&B run %s did not finish cleanly: %s", self._run.id, exc)
        self._run = None
