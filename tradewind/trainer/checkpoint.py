"""Resumable checkpoints in an object store, committed atomically through `latest.json`.

Layout under the store's root (a `file://` folder or an `s3://bucket/prefix`):

    step-0000000042/state.pt    torch.save of the state dict (loadable with weights_only=True)
    step-0000000042/meta.json   {"format", "step", "metric", "mode", "time", "sha256", "bytes"}
    latest.json                 {"step": 42, "checkpoint": "step-0000000042"}: the commit
    best.json                   {"step": 17, "metric": 0.31, "mode": "min"}

A save writes `state.pt`, then `meta.json`, then `best.json`, and only then moves
`latest.json`: a crash at any point leaves `latest.json` naming the previous complete
checkpoint. Loading verifies `state.pt` against the sha256 in `meta.json` (a check against
corruption only: whoever can write the prefix can write both) and reads it with
`torch.load(weights_only=True)`, which builds tensors, numbers, strings, lists and dicts and
refuses any other object: nothing read from the store runs code. Only one process (rank 0)
should save into a store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import random
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

from tradewind.trainer.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

LATEST = "latest.json"
BEST = "best.json"
STATE = "state.pt"
META = "meta.json"
FORMAT = 1
_STEP_FOLDER = re.compile(r"^step-(\d{10})$")

Mode = Literal["min", "max"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt (checksum mismatch), holds objects other than
    tensors and plain data (refused by the weights-only loader) or cannot be restored."""


def step_folder(step: int) -> str:
    """The folder (key prefix) of the checkpoint of `step`: `step-0000000042`."""
    return f"step-{step:010d}"


class Checkpointer:
    """Saves and loads state dicts in `store`, keeping the last `keep_last` and the best.

    `map_location` is passed to `torch.load` (default: tensors are loaded onto the CPU;
    `load_state_dict` then copies them to the modules' devices)."""

    def __init__(
        self, store: ObjectStore, keep_last: int = 3, *, map_location: str | None = "cpu"
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, not {keep_last}")
        self.store = store
        self.keep_last = keep_last
        self.map_location = map_location
        self.loaded_uri: str | None = None
        """The checkpoint the last successful load read (for messages about its content)."""

    # --- saving --------------------------------------------------------------------------

    def save(
        self, step: int, state: dict[str, Any], metric: float | None = None, mode: Mode = "min"
    ) -> str:
        """Save `state` as the checkpoint of `step`, commit it as latest, prune old ones.

        `metric` (lower is better for mode `min`, higher for `max`) picks the best checkpoint,
        which pruning never removes. Returns the checkpoint's URI. Raises TypeError, before
        writing anything, if `state` holds objects `torch.load(weights_only=True)` refuses."""
        if step < 0:
            raise ValueError(f"step must be >= 0, not {step}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        if metric is not None and not math.isfinite(metric):
            log.warning("checkpoint of step %d: metric %r is not finite; not ranked", step, metric)
            metric = None
        data = _serialize(state)
        folder = step_folder(step)
        meta = {
            "format": FORMAT,
            "step": step,
            "metric": metric,
            "mode": mode,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
        self.store.put(f"{folder}/{STATE}", data)
        self.store.put(f"{folder}/{META}", _dumps(meta))
        best = self._update_best(step, mode)
        self.store.put(LATEST, _dumps({"step": step, "checkpoint": folder}))
        self._prune(step, best)
        return self.store.uri(folder)

    def _update_best(self, step: int, mode: Mode) -> int | None:
        """Rank the complete checkpoints up to `step` by metric; rewrite best.json if needed.
        Ties go to the earlier step."""
        sign = 1.0 if mode == "min" else -1.0
        ranked: list[tuple[float, int, float]] = []
        for s in self.steps():
            metric = self._metric(s) if s <= step else None
            if metric is not None:
                ranked.append((sign * metric, s, metric))
        if not ranked:
            self.store.delete(BEST)
            return None
        _, best_step, metric = min(ranked)
        best = {"step": best_step, "metric": metric, "mode": mode}
        try:
            unchanged = self._read_json(BEST) == best
        except ValueError:  # unreadable: rewrite it
            unchanged = False
        if not unchanged:
            self.store.put(BEST, _dumps(best))
        return best_step

    def _metric(self, step: int) -> float | None:
        meta = self._meta(step) or {}
        metric = meta.get("metric")
        if isinstance(metric, bool) or not isinstance(metric, int | float):
            return None
        return float(metric)

    def _prune(self, current: int, best: int | None) -> None:
        """Delete checkpoints older than `current` beyond the last `keep_last` (never the
        best), and leftovers of interrupted saves. Later steps (a timeline abandoned by
        resuming from an earlier checkpoint) are left to be overwritten."""
        folders = self._folders()
        complete = sorted(s for s, keys in folders.items() if META in keys and s <= current)
        keep = {current, *complete[-self.keep_last :]} | ({best} if best is not None else set())
        for step, names in sorted(folders.items()):
            if step >= current or step in keep:
                continue
            # meta.json first: from then on the checkpoint no longer counts as complete.
            for name in sorted(names, key=lambda n: n != META):
                self.store.delete(f"{step_folder(step)}/{name}")

    # --- loading -------------------------------------------------------------------------

    def load_latest(self) -> dict[str, Any] | None:
        """The state of the committed latest checkpoint, or None when nothing is committed.

        If it is corrupt or missing, logs a warning and falls back to the newest earlier
        complete checkpoint; raises CheckpointError when none of them is intact."""
        try:
            pointer = self.latest_step
        except CheckpointError as err:
            log.warning("%s; looking for complete checkpoints instead", err)
            pointer = max(self.steps(), default=None)
        if pointer is None:
            if self.steps():
                log.warning(
                    "%s has checkpoints but no %s (a save was interrupted before its commit)",
                    self.store.uri(""),
                    LATEST,
                )
            return None
        candidates = [pointer, *sorted((s for s in self.steps() if s < pointer), reverse=True)]
        problems: list[str] = []
        for step in candidates:
            try:
                return self.load_step(step)
            except CheckpointError as err:
                problems.append(str(err))
                log.warning("%s; falling back to the previous checkpoint", err)
        raise CheckpointError(
            f"no intact checkpoint under {self.store.uri('')}: " + "; ".join(problems)
        )

    def load(self, uri_or_step: int | str) -> dict[str, Any]:
        """The state of checkpoint `step` of this store, or of the checkpoint at a URI
        (see `load_from_uri`)."""
        if isinstance(uri_or_step, int):
            return self.load_step(uri_or_step)
        return self.load_from_uri(uri_or_step)

    def load_from_uri(self, uri: str) -> dict[str, Any]:
        """The state of the checkpoint at `uri`, e.g. another run's (`resumeFrom: <URI>`);
        see the module-level `load_from_uri` for the forms a URI may take."""
        state = load_from_uri(uri, map_location=self.map_location)
        self.loaded_uri = uri
        return state

    def load_step(self, step: int) -> dict[str, Any]:
        """The verified state of checkpoint `step`; CheckpointError if missing or corrupt."""
        uri = self.store.uri(f"{step_folder(step)}/{STATE}")
        meta = self._meta(step)
        if meta is None:
            raise CheckpointError(f"checkpoint {uri} is incomplete: no readable {META}")
        try:
            data = self.store.get(f"{step_folder(step)}/{STATE}")
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {uri} is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.get("sha256"):
            raise CheckpointError(f"checkpoint {uri} is corrupt: sha256 {digest} != {META}")
        try:
            state: dict[str, Any] = torch.load(
                io.BytesIO(data), map_location=self.map_location, weights_only=True
            )
        except Exception as err:
            raise CheckpointError(f"checkpoint {uri} cannot be loaded: {err}") from err
        self.loaded_uri = uri
        return state

    def resume(self, resume_from: str) -> dict[str, Any] | None:
        """The state to start from for `CheckpointSpec.resumeFrom`: `none` -> None;
        `latest` -> this run's latest (None if there is none); a URI -> this run's latest if
        it has one (a restarted attempt continues), otherwise the checkpoint at the URI."""
        if resume_from == "none":
            return None
        own = self.load_latest()
        if own is not None or resume_from == "latest":
            return own
        return self.load_from_uri(resume_from)

    # --- pointers ------------------------------------------------------------------------

    @property
    def latest_step(self) -> int | None:
        """Step of the committed latest checkpoint (None before the first save)."""
        return self._pointer_step(LATEST)

    @property
    def latest_uri(self) -> str | None:
        """URI of the committed latest checkpoint's folder."""
        step = self.latest_step
        return None if step is None else self.store.uri(step_folder(step))

    @property
    def best_step(self) -> int | None:
        """Step of the best checkpoint by metric (None until a save had a metric)."""
        return self._pointer_step(BEST)

    @property
    def best_metric(self) -> float | None:
        """The metric the best checkpoint was ranked by (None until a save had a metric)."""
        step = self.best_step
        return None if step is None else self._metric(step)

    @property
    def best_uri(self) -> str | None:
        """URI of the best checkpoint's folder."""
        step = self.best_step
        return None if step is None else self.store.uri(step_folder(step))

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints in the store (committed or not), ascending."""
        return sorted(s for s, names in self._folders().items() if META in names)

    def _pointer_step(self, key: str) -> int | None:
        try:
            pointer = self._read_json(key)
        except ValueError as err:
            raise CheckpointError(f"{self.store.uri(key)} is unreadable: {err}") from err
        if pointer is None:
            return None
        step = pointer.get("step")
        if not isinstance(step, int):
            raise CheckpointError(f"{self.store.uri(key)} names no step: {pointer}")
        return step

    def _folders(self) -> dict[int, set[str]]:
        """Step -> names of the files in its folder."""
        folders: dict[int, set[str]] = {}
        for key in self.store.list("step-"):
            folder, _, name = key.partition("/")
            match = _STEP_FOLDER.match(folder)
            if match and name:
                folders.setdefault(int(match[1]), set()).add(name)
        return folders

    def _meta(self, step: int) -> dict[str, Any] | None:
        try:
            return self._read_json(f"{step_folder(step)}/{META}")
        except ValueError:
            return None

    def _read_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at `key`, None if missing; ValueError if it is not an object."""
        try:
            value = json.loads(self.store.get(key))
        except FileNotFoundError:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"{key} holds {type(value).__name__}, not a JSON object")
        return value


def load_from_uri(
    uri: str, *, environ: Mapping[str, str] | None = None, map_location: str | None = "cpu"
) -> dict[str, Any]:
    """The state of the checkpoint at `uri`, e.g. another run's, for `resumeFrom`.

    `uri` is a checkpoint folder (`s3://b/run/step-0000000042`), its `state.pt`, or a run's
    checkpoint root (`s3://b/run`, whose latest is loaded)."""
    target = uri.rstrip("/")
    for name in (STATE, META):
        target = target.removesuffix(f"/{name}")
    root, _, last = target.rpartition("/")
    match = _STEP_FOLDER.match(last)
    if match:
        checkpointer = Checkpointer(open_store(root, environ), map_location=map_location)
        return checkpointer.load_step(int(match[1]))
    state = Checkpointer(open_store(target, environ), map_location=map_location).load_latest()
    if state is None:
        raise CheckpointError(f"no checkpoint at {uri}")
    return state


def _serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    unsafe = get_unsafe_globals_in_checkpoint(buffer)
    if unsafe:
        raise TypeError(
            "checkpoint state holds objects torch.load(weights_only=True) refuses: "
            f"{', '.join(unsafe)}; keep to tensors, numbers, strings, lists and dicts "
            "(rng_state() gives RNG states in that form)"
        )
    return buffer.getvalue()


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, allow_nan=False).encode()


# --- random number generators --------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The states of Python's `random`, NumPy's global generator, torch's CPU generator and
    (when CUDA is available) every CUDA device's, as tensors and numbers only, so a
    checkpoint holding them loads with `weights_only=True`."""
    version, internal, gauss_next = random.getstate()
    legacy = np.random.get_state(legacy=True)
    if not isinstance(legacy, tuple):
        raise ValueError("rng_state() supports NumPy's default global MT19937 generator only")
    bit_generator, key, pos, has_gauss, cached_gaussian = legacy
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators captured by `rng_state()`. CUDA states are restored for the
    devices present (a warning when their number differs)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            npy["key"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_states and len(cuda_states) != devices:
        log.warning(
            "RNG state has %d CUDA device(s), this process sees %d; restoring the first %d",
            len(cuda_states),
            devices,
            min(len(cuda_states), devices),
        )
    for index, cuda_state in enumerate(cuda_states[:devices]):
        torch.cuda.set_rng_state(cuda_state.cpu(), index)
