import logging

import pytest

from tradewind.operator.breaker import CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _broken(threshold: int = 3, cooldown: float = 30.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    breaker = CircuitBreaker("MLflow", threshold=threshold, cooldown=cooldown, clock=clock)
    for _ in range(threshold):
        breaker.before_call()
        breaker.failure(TimeoutError("timed out"))
    return breaker, clock


def test_opens_after_threshold_failures_in_a_row_and_refuses_calls() -> None:
    clock = Clock()
    breaker = CircuitBreaker("MLflow", threshold=3, cooldown=30.0, clock=clock)
    breaker.failure("x")
    breaker.failure("x")
    breaker.success()  # not in a row: counting starts again
    breaker.failure("x")
    breaker.failure("x")
    assert not breaker.is_open
    breaker.before_call()
    breaker.failure("x")
    assert breaker.is_open
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_after_the_cooldown_one_probe_goes_and_a_success_closes_it() -> None:
    breaker, clock = _broken()
    clock.now = 29.0
    assert breaker.is_open
    clock.now = 30.0
    assert not breaker.is_open
    breaker.before_call()  # the probe
    assert breaker.is_open  # the others wait for it
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    breaker.success()
    assert not breaker.is_open
    breaker.before_call()
    breaker.before_call()


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    breaker, clock = _broken()
    clock.now = 31.0
    breaker.before_call()
    breaker.failure(TimeoutError("timed out"))
    clock.now = 60.0
    assert breaker.is_open
    clock.now = 61.0
    breaker.before_call()


def test_says_once_that_it_opened_and_once_that_the_service_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tradewind.operator.breaker"):
        breaker, clock = _broken(threshold=2)
        for _ in range(5):  # refused calls and failed probes say nothing new
            clock.now += 31.0
            breaker.before_call()
            breaker.failure(TimeoutError("timed out"))
        clock.now += 31.0
        breaker.before_call()
        breaker.success()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "failed 2 times in a row" in messages[0] and "timed out" in messages[0]
    assert "answers again" in messages[1]
