"""Leader election on a coordination.k8s.io/v1 Lease: one operator replica works, the others
wait and write nothing.

client-go's pattern (k8s.io/client-go/tools/leaderelection): a candidate takes the Lease when
it is free or when its record has not changed for `duration` seconds by the candidate's own
clock (never by comparing the recorded renewTime with its clock: clocks skew); the holder
renews every `retry` seconds with the Lease's resourceVersion (optimistic concurrency: of two
writers, one gets 409), and stops working when it has not renewed for `renew_deadline`
seconds. renew_deadline < duration: the holder is gone before a standby may take over.

Stopping is `os._exit`, not an exception: reconciles run in threads that no exception in the
elector's thread would reach, and one of them must not write after another replica leads.
Kubernetes restarts the container, which comes back as a standby.

kopf's own peering was weighed and not used: it needs a priority per replica (replicas of a
Deployment are identical; two of equal priority both freeze), an extra CRD, and it pauses
kopf's watches only, not this operator's workers (asyncio tasks and reconcile threads), which
would go on writing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXIT_LEASE_LOST = 75
"""The exit status of a leader that lost its Lease (sysexits' EX_TEMPFAIL: run me again)."""
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who we are, and the timings (seconds)."""

    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"{self.retry}, {self.renew_deadline}, {self.duration}"
            )


def default_identity() -> str:
    """The pod's name (its hostname) and this process: stable across a container's restarts
    in one pod (the operator is PID 1 there), distinct between processes on one host."""
    return f"{socket.gethostname()}_{os.getpid()}"


def default_namespace() -> str:
    """The namespace of the pod's service account in a cluster, else `default`."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class Conflict(Exception):
    """The Lease changed since we read it (409): someone else wrote first."""


class LeaseApi(Protocol):
    """The three Lease calls the elector makes; `timeout` bounds each request."""

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None: ...

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> None: ...

    def replace(self, namespace: str, lease: dict[str, Any], timeout: float) -> None: ...


class KubeLeaseApi:
    """LeaseApi over the kubernetes client's connection pool, with plain JSON bodies (the
    generated models' MicroTime serialisation drops the fraction when it is zero)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, body: Any, timeout: float) -> Any:
        from kubernetes.client.exceptions import ApiException

        api = self.api_client
        serialized = api.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*serialized, _request_timeout=timeout)
        data = bytes(response.response.data)
        if response.status == 409:
            raise Conflict(data.decode(errors="replace"))
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        return json.loads(data)

    @staticmethod
    def _path(namespace: str, name: str = "") -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return f"{base}/{name}" if name else base

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self._call("GET", self._path(namespace, name), None, timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> None:
        self._call("POST", self._path(namespace), lease, timeout)

    def replace(self, namespace: str, lease: dict[str, Any], timeout: float) -> None:
        self._call("PUT", self._path(namespace, lease["metadata"]["name"]), lease, timeout)


def _micro_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire (`acquire`), hold (`hold`: a renewing thread that calls `on_lost` when the
    Lease is lost) and give back (`release`) one Lease. `clock` is monotonic seconds, `sleep`
    waits; both are replaced in tests."""

    def __init__(
        self,
        config: LeaseConfig,
        api: LeaseApi,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config, self.api, self.clock, self.sleep, self.wall = config, api, clock, sleep, wall
        self.observed: tuple[Any, ...] | None = None  # the Lease record as last seen
        self.observed_at = -float("inf")  # when (our clock) that record was first seen
        self.renewed_at: float | None = None  # when our last successful write started
        self.holder: str | None = None  # the holder as last seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self.holder == self.config.identity

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """One attempt: take the Lease if it is free or expired, renew it if it is ours. False
        when another holds it, on a lost race (409) or when the apiserver does not answer."""
        cfg, now = self.config, self.clock()
        timeout = timeout or cfg.retry
        try:
            lease = self.api.read(cfg.namespace, cfg.name, timeout)
            if lease is None:
                self.api.create(cfg.namespace, self._lease(None), timeout)
                return self._won(now, 0)
            spec = lease.get("spec") or {}
            record = tuple(
                spec.get(k) for k in ("holderIdentity", "renewTime", "leaseDurationSeconds")
            )
            if record != self.observed:
                self.observed, self.observed_at = record, now
            self.holder = spec.get("holderIdentity") or None
            duration = spec.get("leaseDurationSeconds") or cfg.duration
            if self.holder not in (None, cfg.identity) and now < self.observed_at + duration:
                return False
            self.api.replace(cfg.namespace, self._lease(lease), timeout)
        except Conflict:
            return False
        except Exception as exc:  # the apiserver unreachable or refusing: try again later
            log.warning("lease %s/%s not acquired or renewed: %s", cfg.namespace, cfg.name, exc)
            return False
        return self._won(now, int(spec.get("leaseTransitions") or 0))

    def _won(self, now: float, transitions: int) -> bool:
        if not self.leading:
            log.info(
                "leading: lease %s/%s acquired by %s (transition %d)",
                self.config.namespace, self.config.name, self.config.identity, transitions,
            )  # fmt: skip
        self.holder, self.renewed_at = self.config.identity, now
        self.observed, self.observed_at = None, now
        return True

    def _lease(self, current: dict[str, Any] | None) -> dict[str, Any]:
        """The Lease record naming us holder from now: `current` renewed or taken over."""
        cfg, stamp = self.config, _micro_time(self.wall())
        spec = dict((current or {}).get("spec") or {})
        if spec.get("holderIdentity") != cfg.identity:
            spec["acquireTime"] = stamp
            if current is not None:
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=cfg.identity,
            leaseDurationSeconds=max(1, round(cfg.duration)),
            renewTime=stamp,
        )
        spec.setdefault("leaseTransitions", 0)
        metadata = dict((current or {}).get("metadata") or {"name": cfg.name})
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,  # with its resourceVersion: a stale replace gets 409
            "spec": spec,
        }

    def acquire(self) -> None:
        """Block until this candidate holds the Lease; a standby reads the Lease every
        `retry` seconds (with jitter) and writes nothing while another holder is alive."""
        announced: str | None = None
        while not self.try_acquire_or_renew():
            if self.holder != announced:
                announced = self.holder
                log.info(
                    "standby: lease %s/%s is held by %s",
                    self.config.namespace, self.config.name, self.holder,
                )  # fmt: skip
            self.sleep(self.config.retry * random.uniform(1.0, 1.2))

    def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew in a daemon thread until `release`; `on_lost` when renewing fails for
        `renew_deadline` seconds or another holder is seen."""
        self._thread = threading.Thread(
            target=self._renew_loop, args=(on_lost,), name="lease-renewal", daemon=True
        )
        self._thread.start()

    def renew_once(self) -> bool:
        """One renewal; False when the Lease is lost (the caller stops working)."""
        assert self.renewed_at is not None, "renew_once before the lease was acquired"
        left = self.renewed_at + self.config.renew_deadline - self.clock()
        if left > 0 and self.try_acquire_or_renew(timeout=max(0.5, left)):
            return True
        if self.holder not in (None, self.config.identity):
            log.critical("lease %s/%s lost to %s", self.config.namespace, self.config.name,
                         self.holder)  # fmt: skip
            return False
        if self.clock() - self.renewed_at >= self.config.renew_deadline:
            log.critical(
                "lease %s/%s not renewed for %.0f s: stopping",
                self.config.namespace, self.config.name, self.config.renew_deadline,
            )  # fmt: skip
            return False
        return True

    def _renew_loop(self, on_lost: Callable[[], None]) -> None:
        try:
            while not self._stop.wait(self.config.retry):
                if not self.renew_once():
                    break
            else:
                return  # released
        except BaseException:  # a renewal thread that dies must not leave a leader working
            log.exception("lease renewal failed")
        on_lost()

    def release(self) -> None:
        """Stop renewing and hand the Lease back (holder cleared, as client-go's
        ReleaseOnCancel), so that a standby takes it at once rather than after it expires.
        Called once this replica has stopped working."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.leading:
            return
        cfg = self.config
        try:
            lease = self.api.read(cfg.namespace, cfg.name, cfg.retry)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == cfg.identity:
                spec = dict(lease["spec"])
                spec.update(
                    holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time(self.wall())
                )
                self.api.replace(cfg.namespace, {**lease, "spec": spec}, cfg.retry)
                log.info("lease %s/%s released", cfg.namespace, cfg.name)
        except Exception as exc:  # it expires on its own
            log.warning("lease %s/%s not released: %s", cfg.namespace, cfg.name, exc)
        self.holder = None


@contextlib.contextmanager
def standby_health(url: str | None) -> Iterator[None]:
    """Answer the liveness URL (kopf's, once leading) while waiting as a standby, so that
    the probes pass; the port is free again when this returns."""
    if url is None:
        yield
        return
    parts = urllib.parse.urlsplit(url)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == (parts.path or "/")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b'{"standby": true}' if ok else b"")

        def log_message(self, *_: Any) -> None:  # one line per probe is noise
            pass

    server = http.server.ThreadingHTTPServer((parts.hostname or "", parts.port or 80), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """A standby holds nothing: SIGTERM or SIGINT ends it at once (as PID 1 in a container,
    without a handler, SIGTERM would be ignored until the grace period's SIGKILL)."""

    def stop(signum: int, _: Any) -> None:
        log.info("standby stopped by signal %d", signum)
        os._exit(0)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def exit_lease_lost() -> None:
    """Stop the process at once: no cleanup that could write after another replica leads."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_LEASE_LOST)
