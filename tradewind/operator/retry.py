"""Retrying a run whose reconcile failed: exponential backoff with jitter up to a cap, the
apiserver's Retry-After honoured, reset by a success; one log line per failure (a traceback
only for an unexpected exception, and only on the first failure in a row)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from tradewind.operator.kube import api_message, retry_after

EXPECTED = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What a reconcile meets when the apiserver refuses, times out or cannot be reached: worth
one line, not a traceback."""


@dataclass
class Backoff:
    """Waits between tries: `base * 2**(n-1)` seconds after the n-th failure in a row, capped
    at `cap`, each drawn from its upper half ("equal jitter": runs that failed together do
    not retry together, and the wait still grows); never less than a Retry-After."""

    cap: float = 300.0
    base: float = 1.0
    failures: int = 0
    draw: Callable[[], float] = field(default=random.random, repr=False)

    def next(self, retry_after: float | None = None) -> float:
        """Count one more failure; the seconds to wait before the next try."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 62))
        delay = ceiling / 2 + self.draw() * ceiling / 2
        return max(delay, retry_after or 0.0)

    def reset(self) -> None:
        self.failures = 0


def describe(exc: BaseException) -> str:
    """One line for a failure: the apiserver's status and message, or the exception's."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}: {api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def record_failure(
    logger: logging.Logger, what: str, exc: BaseException, backoff: Backoff
) -> float:
    """Count the failure of `what` (e.g. "reconcile of TrainingRun ns/name"), log it in one
    line and return the seconds to wait before retrying."""
    delay = backoff.next(retry_after(exc))
    unexpected = not isinstance(exc, EXPECTED)
    logger.warning(
        "%s failed (%d in a row), retrying in %.1f s: %s",
        what,
        backoff.failures,
        delay,
        describe(exc),
        exc_info=exc if unexpected and backoff.failures == 1 else None,
    )
    return delay
