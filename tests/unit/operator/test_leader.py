"""The Lease logic (operator/leader.py) on a fake clock and a fake Lease API that behaves as
the apiserver does: resourceVersion checked on replace (409), 409 on a second create."""

from __future__ import annotations

import copy
import datetime as dt
import threading
import urllib.request
from typing import Any

import pytest

from tradewind.devstack.processes import free_port
from tradewind.operator import leader
from tradewind.operator.leader import Conflict, LeaderElector, LeaseConfig


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False  # the apiserver unreachable
        self.writes: list[str | None] = []  # the holder of each write

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    def create(self, namespace: str, lease: dict[str, Any], timeout: float) -> None:
        self._check()
        if self.lease is not None:
            raise Conflict("exists")
        self._store(lease)

    def replace(self, namespace: str, lease: dict[str, Any], timeout: float) -> None:
        self._check()
        assert self.lease is not None
        if lease["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified")
        self._store(lease)

    def _store(self, lease: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(lease["spec"]["holderIdentity"])

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"]["holderIdentity"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _elector(identity: str, leases: FakeLeases, clock: Clock) -> LeaderElector:
    config = LeaseConfig("ops", "tradewind-operator", identity, 15, 10, 2)
    wall = lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=clock.now)  # noqa: E731
    return LeaderElector(config, leases, clock=clock, sleep=clock.sleep, wall=wall)


def test_the_first_candidate_creates_the_lease_and_leads(leases: FakeLeases, clock: Clock) -> None:
    a = _elector("a", leases, clock)
    assert a.try_acquire_or_renew()
    assert a.leading and leases.holder == "a"
    spec = leases.lease["spec"]  # type: ignore[index]
    assert spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    assert spec["renewTime"].endswith("Z") and "." in spec["renewTime"]  # MicroTime


def test_a_standby_writes_nothing_while_the_holder_renews(leases: FakeLeases, clock: Clock) -> None:
    a, b = _elector("a", leases, clock), _elector("b", leases, clock)
    assert a.try_acquire_or_renew()
    for _ in range(20):  # 40 s: far past the lease duration, but renewed every 2 s
        clock.sleep(2)
        assert a.renew_once()
        assert not b.try_acquire_or_renew()
    assert set(leases.writes) == {"a"} and b.holder == "a" and not b.leading


def test_a_standby_takes_over_once_the_record_is_unchanged_for_the_duration(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b = _elector("a", leases, clock), _elector("b", leases, clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b first sees a's record now
    clock.sleep(14.9)
    assert not b.try_acquire_or_renew()
    clock.sleep(0.2)
    assert b.try_acquire_or_renew()
    spec = leases.lease["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


def test_expiry_is_measured_on_the_standbys_clock_not_the_recorded_time(
    leases: FakeLeases, clock: Clock
) -> None:
    """A renewTime far in the past (a skewed clock) is not an expired lease: the standby
    waits the duration from when it first saw that record."""
    a, b = _elector("a", leases, clock), _elector("b", leases, clock)
    assert a.try_acquire_or_renew()
    leases.lease["spec"]["renewTime"] = "2000-01-01T00:00:00.000000Z"  # type: ignore[index]
    assert not b.try_acquire_or_renew()
    clock.sleep(10)
    assert not b.try_acquire_or_renew()


def test_of_two_standbys_racing_for_an_expired_lease_one_wins(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b, c = (_elector(n, leases, clock) for n in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.sleep(16)
    stale = copy.deepcopy(leases.lease)
    assert b.try_acquire_or_renew()
    real_read = leases.read
    leases.read = lambda *_: copy.deepcopy(stale)  # type: ignore[method-assign]  # c read before b wrote
    assert not c.try_acquire_or_renew()
    leases.read = real_read  # type: ignore[method-assign]
    assert leases.holder == "b" and not c.leading


def test_the_leader_stops_when_it_cannot_renew_within_the_deadline(
    leases: FakeLeases, clock: Clock
) -> None:
    a = _elector("a", leases, clock)
    assert a.try_acquire_or_renew()
    leases.down = True
    clock.sleep(2)
    assert a.renew_once()  # a failed renewal within the deadline: keep working
    clock.sleep(6)
    assert a.renew_once()
    clock.sleep(2)
    assert not a.renew_once()  # 10 s without a renewal
    leases.down = False
    clock.sleep(2)  # a standby may take over only at 15 s: after a has stopped
    b = _elector("b", leases, clock)
    assert not b.try_acquire_or_renew()


def test_the_leader_stops_at_once_when_another_holds_the_lease(
    leases: FakeLeases, clock: Clock
) -> None:
    a = _elector("a", leases, clock)
    assert a.try_acquire_or_renew()
    leases.lease["spec"]["holderIdentity"] = "b"  # type: ignore[index]
    clock.sleep(2)
    assert not a.renew_once()


def test_a_restarted_replica_with_the_same_identity_leads_again_at_once(
    leases: FakeLeases, clock: Clock
) -> None:
    """A container restarted in its pod (same name, PID 1) holds the lease it held."""
    assert _elector("a", leases, clock).try_acquire_or_renew()
    clock.sleep(1)
    again = _elector("a", leases, clock)
    assert again.try_acquire_or_renew()
    assert leases.lease["spec"]["leaseTransitions"] == 0  # type: ignore[index]


def test_acquire_waits_as_a_standby_then_leads(leases: FakeLeases, clock: Clock) -> None:
    a, b = _elector("a", leases, clock), _elector("b", leases, clock)
    assert a.try_acquire_or_renew()
    b.acquire()  # a never renews: b leads after the duration
    assert b.leading and leases.holder == "b"
    assert 15 <= clock.now - 1000 <= 15 + 2 * 1.2 + 1e-9


def test_release_hands_the_lease_over_at_once(leases: FakeLeases, clock: Clock) -> None:
    a, b = _elector("a", leases, clock), _elector("b", leases, clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert leases.holder is None and not a.leading
    assert b.try_acquire_or_renew()  # no waiting for the expiry


def test_the_renewal_thread_calls_on_lost(leases: FakeLeases) -> None:
    config = LeaseConfig("ops", "l", "a", duration=0.3, renew_deadline=0.2, retry=0.02)
    a = LeaderElector(config, leases)
    assert a.try_acquire_or_renew()
    lost = threading.Event()
    a.hold(on_lost=lost.set)
    leases.down = True
    assert lost.wait(5)


def test_the_timings_must_leave_the_leader_time_to_stop() -> None:
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaseConfig("ops", "l", "a", duration=10, renew_deadline=10, retry=2)


def test_a_standby_answers_the_liveness_probe_and_frees_the_port() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    with leader.standby_health(url), urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    with leader.standby_health(url):  # the port is free again (kopf binds it next)
        pass


def test_a_renewal_thread_that_crashes_counts_as_lost(leases: FakeLeases) -> None:
    config = LeaseConfig("ops", "l", "a", duration=0.3, renew_deadline=0.2, retry=0.02)
    a = LeaderElector(config, leases)
    assert a.try_acquire_or_renew()
    a.renew_once = lambda: 1 / 0  # type: ignore[assignment,method-assign,misc,return-value]
    lost = threading.Event()
    a.hold(on_lost=lost.set)
    assert lost.wait(5)


def test_release_stops_the_renewal_thread_without_calling_on_lost(leases: FakeLeases) -> None:
    config = LeaseConfig("ops", "l", "a", duration=0.3, renew_deadline=0.2, retry=0.02)
    a = LeaderElector(config, leases)
    assert a.try_acquire_or_renew()
    lost = threading.Event()
    a.hold(on_lost=lost.set)
    a.release()
    assert not lost.is_set() and leases.holder is None
