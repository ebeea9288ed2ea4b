"""Backoff of a failing reconcile: growth, cap, jitter, Retry-After, reset; one log line per
failure, a traceback only for the first unexpected one."""

import json
import logging

import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from tradewind.operator.retry import Backoff, describe, record_failure


def test_waits_double_up_to_the_cap_within_their_upper_half() -> None:
    low, high = Backoff(cap=8, draw=lambda: 0.0), Backoff(cap=8, draw=lambda: 1.0)
    lows = [low.next() for _ in range(6)]
    highs = [high.next() for _ in range(6)]
    assert highs == [1, 2, 4, 8, 8, 8]
    assert lows == [0.5, 1, 2, 4, 4, 4]


def test_retry_after_is_a_floor_and_a_success_starts_over() -> None:
    backoff = Backoff(draw=lambda: 1.0)
    assert backoff.next(retry_after=30) == 30
    assert backoff.next() == 2 and backoff.failures == 2
    backoff.reset()
    assert backoff.next() == 1


def _api_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Too Many Requests")
    exc.body = json.dumps({"message": message})
    exc.headers = {"Retry-After": "5"}
    return exc


def test_an_apiserver_failure_is_one_line_with_its_message_and_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.retry")
    backoff = Backoff(draw=lambda: 0.0)
    with caplog.at_level(logging.WARNING):
        delay = record_failure(
            log, "reconcile of TrainingRun ns/r", _api_error(429, "slow"), backoff
        )
    assert delay == 5.0
    (record,) = caplog.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "reconcile of TrainingRun ns/r failed (1 in a row), retrying in 5.0 s: "
        "429 Too Many Requests: slow"
    )


def test_an_unexpected_exception_has_its_traceback_once_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.retry")
    backoff = Backoff()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            record_failure(log, "reconcile", KeyError("spec"), backoff)
        record_failure(
            log, "reconcile", urllib3.exceptions.ReadTimeoutError(None, "/", "t"), backoff
        )
    assert [r.exc_info is not None for r in caplog.records] == [True, False, False, False]
    assert "ReadTimeoutError" in caplog.records[-1].getMessage()


def test_describe_prefers_the_apiservers_message() -> None:
    assert describe(_api_error(403, 'jobs.batch "r-0" is forbidden')) == (
        '403 Too Many Requests: jobs.batch "r-0" is forbidden'
    )
    assert describe(ValueError("bad")) == "ValueError: bad"
