"""A circuit breaker for a service the operator only reads from (MLflow): after `threshold`
failures in a row it opens, and callers fail at once for `cooldown` seconds instead of each
waiting out a timeout; then one call goes through as a probe, which closes it on success and
opens it again on failure. Thread-safe: the operator's MLflow readers share one.

Hand-written rather than pybreaker: the operator needs the fail-fast check apart from the
call (to skip queueing a read at all) and exactly one probe in flight when the cool-down ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CircuitOpenError(ConnectionError):
    """The breaker is open: the service was not called."""


class CircuitBreaker:
    """Closed (calls go through) until `threshold` failures in a row; open for `cooldown`
    seconds; then half-open: one probe call, the others still refused."""

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.threshold, self.cooldown, self._clock = name, threshold, cooldown, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        """Whether a call now would be refused (open and not yet due for its probe)."""
        with self._lock:
            return self._opened_at is not None and (
                self._probing or self._clock() - self._opened_at < self.cooldown
            )

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go now (the probe, once the cool-down is
        over: the caller must then report `success` or `failure`)."""
        with self._lock:
            if self._opened_at is None:
                return
            if self._probing or self._clock() - self._opened_at < self.cooldown:
                raise CircuitOpenError(f"{self.name} not called: it failed {self.threshold} "
                                       "times in a row (circuit breaker open)")  # fmt: skip
            self._probing = True

    def success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.warning("%s answers again: calls resume", self.name)
            self._failures, self._opened_at, self._probing = 0, None, False

    def failure(self, error: object) -> None:
        with self._lock:
            self._failures += 1
            if self._probing:  # the probe failed: another cool-down, no new log line
                self._opened_at, self._probing = self._clock(), False
            elif self._opened_at is None and self._failures >= self.threshold:
                self._opened_at = self._clock()
                log.warning(
                    "%s failed %d times in a row (last: %s): not called for %.0f s, then one "
                    "probe; status keeps what was last read",
                    self.name,
                    self._failures,
                    error,
                    self.cooldown,
                )
