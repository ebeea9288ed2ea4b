"""Market data for the trainer: sources, synthetic markets, features, normalisation, windows.

`build_dataset(TrainingData)` chains them for supervised training; the parts are public for
the RL environment (`load_bars`, `align_symbols`) and evaluation (walk-forward folds).
Imports numpy and pandas, so only the trainer imports this package.
"""

from tradewind.trainer.data.cache import cached_feature_table, default_cache_dir, feature_cache_key
from tradewind.trainer.data.dataset import (
    SupervisedDataset,
    SupervisedSplit,
    assemble_dataset,
    build_dataset,
)
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.features import (
    FEATURE_COLUMNS,
    FeatureTable,
    SymbolBars,
    compute_features,
    engineer_features,
    feature_columns,
)
from tradewind.trainer.data.normalize import Normalizer
from tradewind.trainer.data.object_store import ObjectStoreClient, minio_client_from_env
from tradewind.trainer.data.sources import AlignedBars, align_symbols, load_bars
from tradewind.trainer.data.synthetic import REGIME_NAMES, SyntheticMarket, generate_market
from tradewind.trainer.data.windows import (
    BUY,
    HOLD,
    SELL,
    Fold,
    chronological_split,
    expanding_window_folds,
    label_returns,
    sliding_windows,
    walk_forward_folds,
)

__all__ = [
    "BUY",
    "FEATURE_COLUMNS",
    "HOLD",
    "REGIME_NAMES",
    "SELL",
    "AlignedBars",
    "DataError",
    "FeatureTable",
    "Fold",
    "Normalizer",
    "ObjectStoreClient",
    "SupervisedDataset",
    "SupervisedSplit",
    "SymbolBars",
    "SyntheticMarket",
    "align_symbols",
    "assemble_dataset",
    "build_dataset",
    "cached_feature_table",
    "chronological_split",
    "compute_features",
    "default_cache_dir",
    "engineer_features",
    "expanding_window_folds",
    "feature_cache_key",
    "feature_columns",
    "generate_market",
    "label_returns",
    "load_bars",
    "minio_client_from_env",
    "sliding_windows",
    "walk_forward_folds",
]
