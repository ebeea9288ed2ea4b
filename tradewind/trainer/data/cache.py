"""The processed-feature cache: bars -> features is done once per data config and source
version, then read back from an .npz file (the guide's TrainingDataManager)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tradewind.api.common import DataSource, SyntheticData
from tradewind.extensions import is_extension
from tradewind.trainer.data.extensions import extension_fingerprint
from tradewind.trainer.data.features import FeatureTable, engineer_features
from tradewind.trainer.data.object_store import (
    ObjectStoreClient,
    minio_client_from_env,
    object_version,
)
from tradewind.trainer.data.sources import BUNDLED_FILES, bundled_file, load_bars

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""Part of every key; bump it when a change to the code changes the features it computes
(3: market regimes read from real data)."""

# The DataSource fields that do not change the engineered features, so changing them (or the
# window, labels and split of TrainingData) reuses the cached features.
_FIELDS_NOT_IN_KEY = frozenset({"normalization"})


def default_cache_dir() -> Path:
    """`$TRADEWIND_CACHE/features`, by default `~/.cache/tradewind/features`."""
    root = os.environ.get("TRADEWIND_CACHE") or "~/.cache/tradewind"
    return Path(root).expanduser() / "features"


def feature_cache_key(
    source: DataSource, *, synthetic_seed: int = 0, s3_client: ObjectStoreClient | None = None
) -> str:
    """SHA-256 of the feature-relevant config (sorted-key JSON) and the source's version."""
    fields = set(DataSource.model_fields) - _FIELDS_NOT_IN_KEY
    document = {
        "version": CACHE_VERSION,
        "config": source.model_dump(mode="json", include=fields),
        "source": source_fingerprint(source, synthetic_seed=synthetic_seed, s3_client=s3_client),
    }
    extensions = [f for f in source.features if is_extension(f)]
    if extensions:  # their code is the user's: a new version of it computes new features
        document["features"] = [extension_fingerprint("feature", f, 0) for f in extensions]
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def source_fingerprint(
    source: DataSource, *, synthetic_seed: int = 0, s3_client: ObjectStoreClient | None = None
) -> dict[str, Any]:
    """What identifies the version of the source's data: file mtime and size, object ETag,
    the generator settings, or an extension's package version and seed."""
    name = source.source
    if is_extension(name):
        return extension_fingerprint("data_source", name, synthetic_seed)
    if name == "synthetic":
        settings = source.synthetic or SyntheticData(seed=synthetic_seed)
        return {"synthetic": settings.model_dump(mode="json")}
    if name.startswith("s3://"):
        client = s3_client if s3_client is not None else minio_client_from_env()
        return {"object": object_version(name, client)}
    if name.startswith("file://"):
        paths = [Path(name.removeprefix("file://"))]
    else:
        paths = [bundled_file(package, relative) for package, relative in BUNDLED_FILES[name]]
    return {"files": [_file_version(path) for path in paths]}


def _file_version(path: Path) -> dict[str, Any]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {"path": str(path), "missing": True}  # load_bars reports it
    return {"path": str(path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}


def cached_feature_table(
    source: DataSource,
    *,
    synthetic_seed: int = 0,
    cache_dir: Path | None = None,
    s3_client: ObjectStoreClient | None = None,
) -> tuple[FeatureTable, bool]:
    """The feature table of `source` and whether it came from the cache; a miss computes it
    and stores it. `cache_dir=None` uses `default_cache_dir()`."""
    directory = default_cache_dir() if cache_dir is None else cache_dir
    key = feature_cache_key(source, synthetic_seed=synthetic_seed, s3_client=s3_client)
    path = directory / f"{key}.npz"
    table = load_feature_table(path)
    if table is not None:
        log.info("features from cache %s", path)
        return table, True
    bars = load_bars(source, synthetic_seed=synthetic_seed, s3_client=s3_client)
    table = engineer_features(bars, source.features)
    save_feature_table(table, path)
    log.info("features cached in %s", path)
    return table, False


def save_feature_table(table: FeatureTable, path: Path) -> None:
    """Write `table` to `path` atomically (concurrent writers each rename a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as handle:
        np.savez(
            handle,
            symbols=np.array(table.symbols, dtype=str),
            feature_names=np.array(table.feature_names, dtype=str),
            offsets=table.offsets,
            timestamps=table.timestamps,
            values=table.values,
            open=table.open,
            close=table.close,
            volatility=table.volatility,
            regimes=table.regimes,
        )
    os.replace(partial, path)


def load_feature_table(path: Path) -> FeatureTable | None:
    """The table saved at `path`, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return FeatureTable(
                symbols=tuple(str(s) for s in saved["symbols"]),
                feature_names=tuple(str(s) for s in saved["feature_names"]),
                offsets=saved["offsets"],
                timestamps=saved["timestamps"],
                values=saved["values"],
                open=saved["open"],
                close=saved["close"],
                volatility=saved["volatility"],
                regimes=saved["regimes"],
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        log.warning("ignoring unreadable feature cache %s: %s", path, err)
        return None
