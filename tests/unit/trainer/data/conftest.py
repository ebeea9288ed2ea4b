from pathlib import Path

import pandas as pd
import pytest

from tradewind.api.common import SyntheticData
from tradewind.trainer.data.synthetic import generate_market


@pytest.fixture
def daily_bars() -> pd.DataFrame:
    """Three symbols x 300 daily bars, with the synthetic `regime` column dropped."""
    market = generate_market(SyntheticData(num_symbols=3, num_bars=300, seed=7), interval="1d")
    return market.to_frame().drop(columns=["regime"])


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
