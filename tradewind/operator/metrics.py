"""Prometheus metrics of the operator, served on `--metrics-port` at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_SECONDS = Histogram(
    "tradewind_reconcile_duration_seconds",
    "Time of one reconcile of a run (decide and apply).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("tradewind_reconcile_errors_total", "Reconciles that raised.", ["kind"])
RUNS_BY_PHASE = Gauge(
    "tradewind_runs", "Runs by kind and phase, as last reconciled.", ["kind", "phase"]
)
RESTARTS = Counter("tradewind_restarts_total", "Attempts torn down and restarted.", ["kind"])
RUNS_WAITING_TO_START = Gauge(
    "tradewind_runs_waiting_to_start",
    "New runs waiting for a start slot (TRADEWIND_CONCURRENT_STARTS) to create their children.",
)
NORMAL_EVENTS_SHED = Counter(
    "tradewind_normal_events_shed_total",
    "Normal Events not posted: over their namespace's budget (TRADEWIND_NORMAL_EVENTS_*).",
)


def serve(port: int) -> None:
    """Serve /metrics on all interfaces of the pod (the ServiceMonitor scrapes it)."""
    start_http_server(port)
