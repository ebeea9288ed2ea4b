import asyncio
import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from tradewind.api.status import RunStatus
from tradewind.operator import progress
from tradewind.operator.breaker import CircuitBreaker
from tradewind.operator.progress import ProgressReader, fold_progress, headline


def _mlflow_run(
    metrics: dict[str, float], name: str = "r", uid: str = "u-1", run_id: str = "r1", start: int = 0
) -> dict[str, object]:
    """An MLflow run as runs/search answers it, logged by the run `name` of uid `uid`."""
    tags = [{"key": "tradewind.name", "value": name}, {"key": "tradewind.uid", "value": uid}]
    return {
        "info": {"run_id": run_id, "experiment_id": "1", "start_time": str(start)},
        "data": {"metrics": [{"key": k, "value": v} for k, v in metrics.items()], "tags": tags},
    }


def test_headline_is_the_sharpe_with_its_interval_once_there_is_one() -> None:
    training = {"val_loss": 0.51234, "epoch": 3.0}
    assert headline(training) == "val_loss=0.5123"
    finished = training | {
        "backtest_sharpe": 1.234,
        "backtest_sharpe_ci_low": -0.5,
        "backtest_sharpe_ci_high": 2.9,
        "backtest_psr": 0.91,
    }
    assert headline(finished) == "sharpe=1.23 [-0.50, 2.90] psr=0.91"
    # a Sharpe without its interval is never shown alone
    assert headline(training | {"backtest_sharpe": 3.0}) == "val_loss=0.5123"


def test_status_carries_every_significance_figure() -> None:
    metrics = {"backtest_sharpe": 1.0, "backtest_sharpe_ci_low": 0.1, "backtest_psr": 0.97}
    status = fold_progress(RunStatus(), _mlflow_run(metrics), "http://mlflow", epochs=None)
    assert status.metrics == metrics
    assert status.headline_metric is None or "sharpe" not in status.headline_metric


def test_non_finite_metrics_are_left_out_of_the_status() -> None:
    metrics = {"val_loss": float("nan"), "train_loss": 0.5, "test_accuracy": float("inf")}
    status = fold_progress(RunStatus(), _mlflow_run(metrics), "http://mlflow", epochs=None)
    assert status.metrics == {"train_loss": 0.5}
    assert status.headline_metric == "train_loss=0.5"


# --- nothing MLflow holds makes the status invalid -------------------------------------------


def test_long_strings_are_cut_and_bad_values_left_out_so_the_status_stays_valid() -> None:
    from tradewind.api.status import CUT_MARK, Condition

    before = RunStatus(checkpoint={"latest": "s3://b/step-1"})
    run = _mlflow_run({"val_loss": 0.5, "k" * 251: 1.0, "epoch": -3.0})
    run["data"]["metrics"].append({"key": "text", "value": "not a number"})  # type: ignore[index]
    run["data"]["tags"] = [  # type: ignore[index]
        {"key": "tradewind.checkpoint.latest", "value": "s3://b/" + "x" * 5000},
        {"key": "tradewind.checkpoint.best", "value": "s3://b/best"},
    ]
    status = fold_progress(before, run, "http://mlflow", epochs=10)
    assert set(status.metrics) == {"val_loss", "epoch"}
    assert status.progress.epoch == 0 and status.progress.percent == 0
    assert status.checkpoint.latest == "s3://b/step-1"  # a cut URI would point nowhere
    assert status.checkpoint.best == "s3://b/best"
    message = Condition(type="Failed", status="True", reason="R" * 2000, message="m" * 40000)
    assert len(message.reason) == 1024 and len(message.message) == 32768
    assert message.message.endswith(CUT_MARK)
    status.headline_metric = "h" * 1000
    status.mlflow.url = "http://mlflow/" + "u" * 5000
    status.conditions.append(message)
    assert len(status.headline_metric) == 256 and len(status.mlflow.url) == 4096
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert RunStatus.model_validate(dumped) == status


# --- reading off the reconcile path, with a timeout and a circuit breaker --------------------


@pytest.fixture
def black_hole() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_a_black_holed_mlflow_opens_the_breaker_and_is_then_not_called(
    black_hole: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, accepted = black_hole
    monkeypatch.setattr(progress, "MLFLOW_TIMEOUT_SECONDS", 0.2)
    reader = ProgressReader(uri, breaker=CircuitBreaker("MLflow", threshold=2, cooldown=600))
    woken: list[str] = []

    async def poll() -> list[bool]:
        started = [reader.request(("ns", f"r{i}"), None, "exp", lambda _: woken.append("x"))
                   for i in range(20)]  # fmt: skip
        again = reader.request(("ns", "r0"), None, "exp", lambda _: None)
        while reader._reading:
            await asyncio.sleep(0.05)
        return [*started, again]

    started = asyncio.run(poll())
    assert all(started[:-1]) and not started[-1]  # one read per run at a time
    assert reader.breaker.is_open and not woken
    assert len(accepted) <= progress.READERS + 1  # the rest failed without calling MLflow
    calls = len(accepted)
    assert reader.find_run("exp", "r0", "ns") is None  # fails at once
    assert asyncio.run(_request(reader)) is False  # not even queued
    assert len(accepted) == calls


async def _request(reader: ProgressReader) -> bool:
    return reader.request(("ns", "r0"), None, "exp", lambda _: None)


class _MLflow(http.server.BaseHTTPRequestHandler):
    searches: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        self._answer({"experiment": {"experiment_id": "1"}})

    def do_POST(self) -> None:
        self.searches.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._answer({"runs": [_mlflow_run({"val_loss": 0.25, "epoch": 2.0})]})

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_read_in_the_background_finds_the_run_by_its_uid_and_hands_it_over() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader = ProgressReader(f"http://127.0.0.1:{server.server_address[1]}")

    async def read() -> tuple[bool, dict[str, Any]]:
        found: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        assert reader.request(("ns", "r"), "uid-1", "exp", found.set_result)
        again = reader.request(("ns", "r"), "uid-1", "exp", found.set_result)
        return again, await asyncio.wait_for(found, 10)

    try:
        again, found = asyncio.run(read())
    finally:
        server.shutdown()
    assert not again  # one read of a run at a time
    assert found["info"]["run_id"] == "r1" and found["data"]["metrics"]
    search = _MLflow.searches[-1]["filter"]
    assert "tags.\"tradewind.uid\" = 'uid-1'" in search and "'ns'" in search
    status = fold_progress(RunStatus(), found, reader.uri or "", epochs=4)
    assert status.progress.percent == 50 and status.metrics["val_loss"] == 0.25


class _Namespaces(_MLflow):
    """MLflow holding runs of two namespaces; namespace a's RUNNING runs come in two pages, and
    three of its MLflow runs ended lately: r3's only one, r2's second (its first attempt's
    trainer died without ending its own, which stays RUNNING), and r1's first."""

    def do_POST(self) -> None:
        search = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.searches.append(search)
        running, ns = "RUNNING" in search["filter"], search["filter"].split("'")[1]
        if ns == "a" and running and "page_token" not in search:
            runs = [
                _mlflow_run({"epoch": 9.0}, "r1", "uid-new", "a-r1-new", 40),  # r1 re-created
                _mlflow_run({"epoch": 1.0}, "r1", "uid-1", "a-r1", 30),
            ]
            self._answer({"runs": runs, "next_page_token": "page-2"})
        elif ns == "a" and running:
            self._answer({"runs": [_mlflow_run({"epoch": 2.0}, "r2", "uid-2", "a-r2", 20)]})
        elif ns == "a":
            ended = [
                _mlflow_run({"epoch": 10.0}, "r3", "uid-3", "a-r3", 15),
                _mlflow_run({"epoch": 4.0}, "r2", "uid-2", "a-r2-second", 25),
                _mlflow_run({"epoch": 8.0}, "r1", "uid-1", "a-r1-first", 5),  # before a-r1
            ]
            self._answer({"runs": ended})
        elif running:
            self._answer({"runs": [_mlflow_run({"epoch": 3.0}, "r1", "uid-9", "b-r1", 10)]})
        else:
            self._answer({"runs": []})


def test_the_runs_followed_in_a_namespace_are_read_by_searches_of_the_namespace() -> None:
    _Namespaces.searches = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Namespaces)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader = ProgressReader(f"http://127.0.0.1:{server.server_address[1]}", poll_seconds=600)
    found: dict[str, str] = {}
    followed = {
        ("a", "r1"): ("uid-1", "2026-12-05T10:00:00Z"),
        ("a", "r2"): ("uid-2", "2026-12-05T11:00:00Z"),
        ("a", "r3"): ("uid-3", "2026-12-05T11:00:00Z"),  # its MLflow run has just ended
        ("a", "r4"): ("uid-4", "2026-12-05T11:00:00Z"),  # no MLflow run yet
        ("b", "r1"): ("uid-9", "2026-12-05T12:00:00Z"),
    }

    async def one_scan() -> None:
        for (ns, name), (uid, created) in followed.items():

            def done(run: dict[str, Any], key: str = f"{ns}/{name}") -> None:
                found[key] = run["info"]["run_id"]

            reader.follow(("TrainingRun", ns, name), uid, "exp", created, done)
        while len(found) < 4 or reader._scanning:
            await asyncio.sleep(0.02)

    try:
        asyncio.run(asyncio.wait_for(one_scan(), 10))
    finally:
        server.shutdown()
    # each run gets its own uid's newest MLflow run, RUNNING or not (not the newer one of a
    # run re-created under its name); one without an MLflow run gets nothing
    assert found == {"a/r1": "a-r1", "a/r2": "a-r2-second", "a/r3": "a-r3", "b/r1": "b-r1"}
    searches = [s["filter"] for s in _Namespaces.searches if "page_token" not in s]
    assert len(_Namespaces.searches) == len(searches) + 1  # a's RUNNING runs in two pages
    since_a = 1_796_464_800_000 - progress.SINCE_SLACK_MS  # r1's creation, less the slack
    running = [f for f in searches if "RUNNING" in f]
    assert sorted(running) == [
        "tags.\"tradewind.namespace\" = 'a' and attributes.status = 'RUNNING' and "
        f"attributes.start_time >= {since_a}",
        "tags.\"tradewind.namespace\" = 'b' and attributes.status = 'RUNNING' and "
        f"attributes.start_time >= {since_a + 2 * 3_600_000}",
    ]
    ended = [int(f.rsplit(">= ", 1)[1]) for f in searches if "end_time" in f]
    lately = time.time() * 1000 - 1_200_000 - progress.SINCE_SLACK_MS  # two periods of 600 s
    assert len(ended) == 2 and all(abs(since - lately) < 60_000 for since in ended)


def test_followed_runs_are_read_less_often_when_there_are_many() -> None:
    reader = ProgressReader("http://127.0.0.1:9", poll_seconds=15, reads_per_second=10)
    follow = progress.Follow("exp", None, 0, lambda _: None)
    reader.following = {("TrainingRun", "ns", f"r{n}"): follow for n in range(5)}
    few = reader.period()
    reader.following = {("TrainingRun", "ns", f"r{n}"): follow for n in range(1000)}
    assert few == 15 and reader.period() == 100  # 1000 runs: at most 10 runs read a second
