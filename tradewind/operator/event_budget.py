"""How many Normal Events the operator posts: a token bucket per namespace. Warnings never
wait for it.

Events are the apiserver's dearest record per byte (an etcd write with a lease each), and a
run's happy path brings two (Created, AllNodesRunning) that its status conditions carry too.
A burst of a thousand runs in one namespace would post two thousand; with a budget it posts
`burst` at once and `per_second` after, and each run's status still says everything. One
namespace's burst does not spend another's budget. client-go's recorders shed Events in the
same spirit (a per-object spam filter, a bounded queue that drops when full)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tradewind.operator import metrics


class EventBudget:
    """`take(namespace)`: whether a Normal Event may be posted there now (and spend it)."""

    def __init__(
        self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # namespace -> (tokens, when)
        self._lock = threading.Lock()  # reconciles run in threads

    def take(self, namespace: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(namespace, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
            allowed = tokens >= 1.0
            self._buckets[namespace] = (tokens - 1.0 if allowed else tokens, now)
        if not allowed:
            metrics.NORMAL_EVENTS_SHED.inc()
        return allowed
