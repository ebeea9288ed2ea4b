"""Two operator processes on one Lease, against the real control plane: one leads and the
other writes nothing; SIGKILL the leader mid-burst of 100 runs and mid-Sweep, and the other
takes over with no Job created twice and no trial lost or asked twice. The takeover time is
printed (bench material, not asserted)."""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import Kubectl
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_sweep_operator import _children, _drive, _study, _sweep
from tradewind.devstack import DevStack
from tradewind.operator.sweep_status import TRIAL_LABEL

pytestmark = pytest.mark.integration
LEASE = f"le-{uuid.uuid4().hex[:8]}"
RUN_LABEL = "tradewind.dev/run"
ATTEMPT_LABEL = "tradewind.dev/attempt"


@pytest.fixture(scope="module")
def mlflow(stack: DevStack) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(stack.env()["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def pair(
    stack: DevStack, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[OperatorProcess]]:
    """Two operators on the Lease `default/LEASE` and one Optuna storage."""
    first = OperatorProcess(stack, tmp_path_factory.mktemp("replica"), TRADEWIND_LEASE_NAME=LEASE)
    second = OperatorProcess(
        stack, tmp_path_factory.mktemp("replica"), TRADEWIND_LEASE_NAME=LEASE,
        TRADEWIND_OPTUNA_STORAGE=first.storage,
    )  # fmt: skip
    second.storage = first.storage
    ops = [first, second]
    yield ops
    for op in ops:
        op.stop()


def _identity(op: OperatorProcess) -> str:
    return op.env["TRADEWIND_LEASE_IDENTITY"]


def _holder(kubectl: Kubectl) -> str | None:
    found = kubectl.run("get", f"lease/{LEASE}", "-n", "default", "-o", "json", check=False)
    if found.returncode != 0:
        return None
    return json.loads(found.stdout)["spec"].get("holderIdentity")


def _wait_for_holder(kubectl: Kubectl, ops: list[OperatorProcess], timeout: float = 90) -> float:
    """Until one of `ops` holds the Lease; when it was seen (monotonic)."""
    wanted = {_identity(op) for op in ops}
    deadline = time.monotonic() + timeout
    while _holder(kubectl) not in wanted:
        assert time.monotonic() < deadline, f"no leader among {wanted}: {_holder(kubectl)}"
        time.sleep(0.2)
    return time.monotonic()


def _roles(kubectl: Kubectl, ops: list[OperatorProcess]) -> tuple[OperatorProcess, OperatorProcess]:
    """Both running, one leading: (leader, standby)."""
    for op in ops:
        if op.proc is None or op.proc.poll() is not None:
            op.start()
    _wait_for_holder(kubectl, ops)
    holder = _holder(kubectl)
    leader = next(op for op in ops if _identity(op) == holder)
    standby = next(op for op in ops if op is not leader)
    deadline = time.monotonic() + 60
    while "standby: lease" not in standby.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the second replica never reported standby"
        time.sleep(0.2)
    return leader, standby


def _metric(op: OperatorProcess, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))


def _wrote(op: OperatorProcess, since: int) -> list[str]:
    """The log lines of writes (creates, deletes, status) after byte `since`."""
    text = op.log.read_bytes()[since:].decode(errors="replace")
    return [ln for ln in text.splitlines() if any(w in ln for w in ('"created ', '"deleted '))]


def _time_takeover(kubectl: Kubectl, standby: OperatorProcess, killed: float, what: str) -> None:
    took = _wait_for_holder(kubectl, [standby], timeout=120)
    print(f"\nleader takeover after SIGKILL {what}: {took - killed:.1f} s")


class JobWatch:
    """A watch of a namespace's Jobs from now on, in a thread: every Job created there, by
    uid (a Job deleted and created again shows twice).

    The apiserver may close a watch at any time (it drops a watcher that reads too slowly,
    as a busy test machine's may during a burst); the watch then resumes from the last
    resourceVersion it saw, so no event is lost."""

    def __init__(
        self, kubectl: Kubectl, namespace: str, on_job: Callable[[int], None] = lambda _: None
    ) -> None:
        """`on_job(count)` in the watch's thread after each Job created."""
        from kubernetes import client, config, watch

        self.api = client.BatchV1Api(config.new_client_from_config(config_file=kubectl.kubeconfig))
        self.namespace = namespace
        self.watch = watch.Watch()
        self.seen: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
        self.lock = threading.Lock()
        self.failed: list[Exception] = []
        self.stopping = False
        listed = self.api.list_namespaced_job(namespace)
        for job in listed.items:
            self._record(job.metadata)
        # the watch starts where the list ended: nothing falls between them
        stream = self.watch.stream(
            self.api.list_namespaced_job, namespace,
            resource_version=listed.metadata.resource_version,
        )  # fmt: skip

        def follow() -> None:
            try:
                for event in stream:
                    if self._record(event["object"].metadata):
                        on_job(self.added())
            except Exception as e:  # reported by stop()
                if not self.stopping:
                    self.failed.append(e)

        self.thread = threading.Thread(target=follow, daemon=True)
        self.thread.start()

    def _record(self, meta: Any) -> bool:
        """Note a Job; whether it is new."""
        labels = meta.labels or {}
        job = (meta.uid, labels.get(ATTEMPT_LABEL, ""))
        with self.lock:
            jobs = self.seen[labels.get(RUN_LABEL, "")]
            new = job not in jobs
            jobs.add(job)
        return new

    def _uids(self) -> set[str]:
        with self.lock:
            return {uid for jobs in self.seen.values() for uid, _ in jobs}

    def added(self) -> int:
        """Jobs created so far."""
        with self.lock:
            return sum(len(jobs) for jobs in self.seen.values())

    def stop(self, timeout: float = 60) -> dict[str, list[tuple[str, str]]]:
        """Per run: the (uid, attempt) of each Job seen, once the watch has seen every Job
        that exists now (its events may lag the apiserver)."""
        listed = self.api.list_namespaced_job(self.namespace).items
        present: set[str] = {job.metadata.uid for job in listed}
        deadline = time.monotonic() + timeout
        while not present <= self._uids() and not self.failed and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stopping = True
        self.watch.stop()
        assert not self.failed, f"the Job watch failed: {self.failed[0]!r}"
        missed = present - self._uids()
        assert not missed, f"the Job watch never saw {sorted(missed)}"
        with self.lock:
            return {run: sorted(jobs) for run, jobs in self.seen.items()}


def test_one_replica_leads_and_the_other_writes_nothing(
    kubectl: Kubectl, pair: list[OperatorProcess], namespace: str
) -> None:
    first, second = pair
    first.start()
    _wait_for_holder(kubectl, [first])
    second.start()
    leader, standby = _roles(kubectl, pair)
    assert leader is first
    mark = standby.log.stat().st_size
    kubectl.apply(_run("solo"), "-n", namespace)
    kubectl.wait("--for=condition=Succeeded", "trainingrun/solo", "-n", namespace)
    assert _wrote(leader, 0) and not _wrote(standby, mark)
    assert _metric(standby, "tradewind_reconcile_duration_seconds_count") == 0
    assert _metric(leader, "tradewind_reconcile_duration_seconds_count") >= 1
    assert _holder(kubectl) == _identity(first)


def _run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tradewind.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
    }


def test_the_standby_takes_over_a_burst_of_100_runs_creating_no_job_twice(
    kubectl: Kubectl, pair: list[OperatorProcess], namespace: str
) -> None:
    leader, standby = _roles(kubectl, pair)
    killed: list[float] = []

    def kill_at_the_tenth_job(count: int) -> None:  # mid-burst: the leader is creating Jobs
        if count >= 10 and not killed:
            leader.kill()
            killed.append(time.monotonic())

    watch = JobWatch(kubectl, namespace, on_job=kill_at_the_tenth_job)
    names = [f"burst-{i:03d}" for i in range(100)]
    burst = {"apiVersion": "v1", "kind": "List", "items": [_run(n) for n in names]}
    kubectl.apply(burst, "-n", namespace)
    deadline = time.monotonic() + 180
    while not killed:
        assert time.monotonic() < deadline, "the leader created fewer than 10 Jobs in 180 s"
        time.sleep(0.05)
    at_kill = watch.added()
    _time_takeover(kubectl, standby, killed[0], f"mid-burst of 100 runs ({at_kill} Jobs then)")
    kubectl.wait("--for=condition=Succeeded", "trainingruns", "--all", "-n", namespace,
                 timeout=600)  # fmt: skip
    jobs = watch.stop()
    assert sorted(jobs) == names
    duplicated = {run: seen for run, seen in jobs.items() if len(seen) != 1}
    assert not duplicated, duplicated
    assert {attempt for seen in jobs.values() for _, attempt in seen} == {"0"}
    runs = kubectl.get("trainingruns", "-n", namespace)["items"]
    assert {r["status"]["phase"] for r in runs} == {"Succeeded"}
    assert all(int(r["status"].get("restarts") or 0) == 0 for r in runs)


def test_the_standby_takes_over_a_sweep_losing_and_repeating_no_trial(
    kubectl: Kubectl, pair: list[OperatorProcess], namespace: str, mlflow: Any
) -> None:
    leader, standby = _roles(kubectl, pair)
    kubectl.apply(_sweep("ha", maxTrials=4, parallelism=2), "-n", namespace)
    for n in (0, 1):
        kubectl.wait("--for=create", f"trainingrun/ha-{n}", "-n", namespace)
        kubectl.wait("--for=condition=Running", f"trainingrun/ha-{n}", "-n", namespace)
    leader.kill()
    _time_takeover(kubectl, standby, time.monotonic(), "mid-Sweep")
    curve = {n: {1: 0.7, 2: 0.6 - 0.01 * n} for n in range(4)}
    _drive(kubectl, mlflow, namespace, "ha", curve, release={0, 1, 2, 3}, parallelism=2)
    status = kubectl.get("sweep/ha", "-n", namespace)["status"]
    assert status["phase"] == "Succeeded" and status["trials"]["completed"] == 4, status
    study = _study(standby, kubectl, namespace, "ha")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    children = _children(kubectl, namespace, "ha")
    numbers = sorted(int(c["metadata"]["labels"][TRIAL_LABEL]) for c in children)
    assert numbers == [0, 1, 2, 3]
