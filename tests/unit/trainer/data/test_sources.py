import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.unit.trainer.data.fake_s3 import FakeMinio, FakeResponse
from tradewind.api.common import DataSource
from tradewind.trainer.data.errors import DataError
from tradewind.trainer.data.object_store import minio_client_from_env
from tradewind.trainer.data.sources import BAR_COLUMNS, align_symbols, load_bars


def _ranges(bars: pd.DataFrame) -> dict[str, tuple[str, str, int]]:
    grouped = bars.groupby("symbol", observed=True)["timestamp"]
    return {
        str(symbol): (str(ts.min().date()), str(ts.max().date()), len(ts)) for symbol, ts in grouped
    }


def _assert_tidy(bars: pd.DataFrame) -> None:
    assert tuple(bars.columns[:7]) == BAR_COLUMNS
    assert bars["timestamp"].dtype == "datetime64[ns]"
    assert bars.sort_values(["symbol", "timestamp"]).index.equals(bars.index)
    assert (bars[["open", "high", "low", "close"]] > 0).all().all()


def test_stocks_have_the_five_symbols_and_their_date_ranges() -> None:
    bars = load_bars(DataSource(source="stocks"))
    _assert_tidy(bars)
    assert _ranges(bars) == {
        "AAPL": ("2000-03-01", "2013-03-01", 3270),
        "FB": ("2012-05-18", "2013-03-01", 196),
        "GOOG": ("2004-08-19", "2013-03-01", 2148),
        "IBM": ("2000-03-01", "2013-03-01", 3270),
        "MSFT": ("2000-03-01", "2013-03-01", 3270),
    }


def test_stock_prices_are_split_adjusted() -> None:
    aapl = load_bars(DataSource(source="stocks", symbols=["AAPL"]))
    close = aapl.set_index("timestamp")["close"]
    # AAPL split 2:1 on 2000-06-21; unadjusted closes halve from one day to the next.
    assert abs(close["2000-06-21"] / close["2000-06-20"] - 1) < 0.1


def test_indices_are_sp500_and_nasdaq() -> None:
    bars = load_bars(DataSource(source="indices"))
    _assert_tidy(bars)
    assert _ranges(bars) == {
        "NASDAQ": ("1999-01-04", "2018-12-31", 5031),
        "SP500": ("1999-01-04", "2018-12-31", 5031),
    }


def test_eurusd_is_hourly() -> None:
    bars = load_bars(DataSource(source="eurusd", interval="1h"))
    _assert_tidy(bars)
    assert _ranges(bars) == {"EURUSD": ("2017-01-01", "2017-12-29", 6225)}
    assert bars["timestamp"].iloc[0] == pd.Timestamp("2017-01-01 22:00")


def test_symbols_and_inclusive_dates_filter() -> None:
    source = DataSource(
        source="stocks", symbols=["MSFT", "IBM"], start=dt.date(2010, 1, 4), end=dt.date(2010, 1, 8)
    )
    bars = load_bars(source)
    assert sorted(bars["symbol"].cat.categories) == ["IBM", "MSFT"]
    assert _ranges(bars) == {
        "IBM": ("2010-01-04", "2010-01-08", 5),
        "MSFT": ("2010-01-04", "2010-01-08", 5),
    }


def test_unknown_symbol_error_lists_the_available_ones() -> None:
    with pytest.raises(DataError) as raised:
        load_bars(DataSource(source="stocks", symbols=["AAPL", "TSLA"]))
    message = str(raised.value)
    assert "unknown symbol(s) TSLA" in message
    assert "available: AAPL, FB, GOOG, IBM, MSFT" in message


def test_dates_without_bars_are_an_error() -> None:
    with pytest.raises(DataError, match="no bars between 2015-01-01"):
        load_bars(DataSource(source="stocks", start=dt.date(2015, 1, 1)))


def test_hourly_bars_resample_to_daily() -> None:
    hourly = load_bars(DataSource(source="eurusd", interval="1h"))
    daily = load_bars(DataSource(source="eurusd", interval="1d"))
    day = hourly[hourly["timestamp"].dt.date == dt.date(2017, 3, 15)]
    row = daily[daily["timestamp"] == pd.Timestamp("2017-03-15")].iloc[0]
    assert row["open"] == day["open"].iloc[0]
    assert row["high"] == day["high"].max()
    assert row["low"] == day["low"].min()
    assert row["close"] == day["close"].iloc[-1]
    assert row["volume"] == pytest.approx(day["volume"].sum())
    assert len(daily) == hourly["timestamp"].dt.date.nunique()


def test_finer_interval_than_the_source_is_refused() -> None:
    with pytest.raises(DataError, match=r"interval 1h is finer .* use 1d or coarser"):
        load_bars(DataSource(source="stocks", interval="1h"))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_file_round_trip(tmp_path: Path, daily_bars: pd.DataFrame, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"
    if suffix == ".parquet":
        daily_bars.to_parquet(path)
    else:
        daily_bars.to_csv(path, index=False)
    loaded = load_bars(DataSource(source=f"file://{path}"))
    pd.testing.assert_frame_equal(loaded, daily_bars, check_categorical=False, rtol=1e-12)


def test_file_columns_any_case_and_timestamps_with_offsets(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "Symbol,Timestamp,Open,High,Low,Close,Volume\n"
        "X,2024-01-02T10:00:00+02:00,1,2,0.5,1.5,10\n"
        "X,2024-01-01T10:00:00+02:00,1,2,0.5,1.5,10\n"
    )
    bars = load_bars(DataSource(source=f"file://{path}"))
    assert list(bars["timestamp"]) == [
        pd.Timestamp("2024-01-01 08:00"),
        pd.Timestamp("2024-01-02 08:00"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("symbol,timestamp,open,high,low,close\nX,2024-01-01,1,1,1,1\n", "missing column"),
        ("symbol,timestamp,open,high,low,close,volume\nX,2024-01-01,1,1,0,1,1\n", "positive"),
        (
            "symbol,timestamp,open,high,low,close,volume\n"
            "X,2024-01-01,1,1,1,1,1\nX,2024-01-01,1,1,1,1,1\n",
            "duplicate bars",
        ),
    ],
)
def test_bad_files_are_data_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_bars(DataSource(source=f"file://{path}"))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_bars(DataSource(source=f"file://{tmp_path}/absent.csv"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_s3_objects_are_read_with_the_client(daily_bars: pd.DataFrame, suffix: str) -> None:
    buffer = io.BytesIO()
    if suffix == ".parquet":
        daily_bars.to_parquet(buffer)
    else:
        buffer.write(daily_bars.to_csv(index=False).encode())
    client = FakeMinio({("market", f"daily/bars{suffix}"): buffer.getvalue()})
    loaded = load_bars(DataSource(source=f"s3://market/daily/bars{suffix}"), s3_client=client)
    pd.testing.assert_frame_equal(loaded, daily_bars, check_categorical=False, rtol=1e-12)
    assert all(r.closed and r.released for r in client.responses)


def test_missing_s3_object_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"cannot read s3://market/none\.csv: NoSuchKey"):
        load_bars(DataSource(source="s3://market/none.csv"), s3_client=FakeMinio({}))


def test_transient_s3_errors_propagate_unchanged() -> None:
    class Flaky(FakeMinio):
        def get_object(self, bucket_name: str, object_name: str) -> FakeResponse:
            raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        load_bars(DataSource(source="s3://market/x.csv"), s3_client=Flaky({}))


def test_minio_client_needs_an_endpoint() -> None:
    with pytest.raises(DataError, match="AWS_ENDPOINT_URL or TRADEWIND_S3_ENDPOINT"):
        minio_client_from_env({})


def test_minio_client_from_env_uses_scheme_for_tls() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
    }
    client = minio_client_from_env(env)
    assert type(client).__name__ == "Minio"
    assert not client._base_url.is_https  # creating the client does not connect


def test_align_symbols_keeps_only_common_timestamps(daily_bars: pd.DataFrame) -> None:
    # Drop SYN0001's first 10 bars and one bar in the middle of SYN0002.
    first_times = sorted(daily_bars["timestamp"].unique())
    missing = (daily_bars["symbol"] == "SYN0001") & daily_bars["timestamp"].isin(first_times[:10])
    missing |= (daily_bars["symbol"] == "SYN0002") & (daily_bars["timestamp"] == first_times[50])
    aligned = align_symbols(daily_bars[~missing].reset_index(drop=True), fields=("close", "volume"))
    assert aligned.symbols == ("SYN0000", "SYN0001", "SYN0002")
    assert aligned.values.shape == (300 - 11, 3, 2)
    assert first_times[50] not in aligned.timestamps
    assert aligned.timestamps[0] == first_times[10]
    expected = daily_bars.set_index(["symbol", "timestamp"]).loc[
        ("SYN0002", first_times[60]), "close"
    ]
    assert aligned.values[list(aligned.timestamps).index(first_times[60]), 2, 0] == expected
    assert np.all(np.diff(aligned.timestamps) > np.timedelta64(0))


def test_align_symbols_without_shared_timestamps_is_an_error(daily_bars: pd.DataFrame) -> None:
    shifted = daily_bars.copy()
    shifted.loc[shifted["symbol"] == "SYN0000", "timestamp"] += pd.Timedelta(hours=1)
    with pytest.raises(DataError, match="share no timestamps"):
        align_symbols(shifted)
