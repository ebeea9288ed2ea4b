"""The registry of per-object workers behind runs and Sweeps: started on an object's first
event, fed its slimmed bodies, woken, stopped when it is gone or replaced, all stopped at
shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tradewind.operator.workers import Worker, Workers


class Recorder(Worker):
    """Records the body of each pass; `hang` makes a pass ignore being stopped."""

    def __init__(self, body: dict[str, Any], hang: bool = False) -> None:
        super().__init__(body)
        self.seen: list[dict[str, Any]] = []
        self.hang = hang
        self.ended = False

    async def run(self) -> None:
        try:
            while not self.stopped:
                self.wakeup.clear()
                self.seen.append(self.body)
                if self.hang:
                    await asyncio.sleep(3600)
                await self.sleep(3600)
        finally:
            self.ended = True


def body(name: str, uid: str = "u1", **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": uid, "managedFields": [{"manager": "x"}]}
    return {"kind": "Sweep", "metadata": meta, "spec": {"n": 1}, **extra}


def recording_start(started: list[Recorder]) -> Callable[[dict[str, Any]], Worker]:
    """A start function that makes a Recorder of each body and appends it to `started`."""

    def start(slim: dict[str, Any]) -> Worker:
        started.append(Recorder(slim))
        return started[-1]

    return start


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_worker_starts_on_the_first_event_and_is_fed_each_later_body_slimmed() -> None:
    async def scenario() -> None:
        workers, started = Workers("sweep"), []
        start = recording_start(started)

        workers.on_event(body("a"), "MODIFIED", start)
        await settle()
        (worker,) = started
        assert worker.task.get_name() == "sweep ns/a"
        assert worker.seen[-1]["metadata"] == {"name": "a", "namespace": "ns", "uid": "u1"}
        workers.on_event(body("a", status={"phase": "Running"}), "MODIFIED", start)
        await settle()
        assert len(started) == 1
        assert worker.seen[-1]["status"] == {"phase": "Running"}
        assert "managedFields" not in worker.seen[-1]["metadata"]
        workers.wake(("Sweep", "ns", "a"))
        workers.wake(("Sweep", "ns", "unknown"))  # no worker: nothing happens
        await settle()
        assert len(worker.seen) == 3
        await workers.stop_all()

    asyncio.run(scenario())


def test_a_gone_object_stops_its_worker_and_a_new_uid_gets_a_new_one() -> None:
    async def scenario() -> None:
        workers, started = Workers("reconcile"), []
        start = recording_start(started)

        workers.on_event(body("a"), "MODIFIED", start)
        workers.on_event(body("a", uid="u2"), "MODIFIED", start)  # deleted and created again
        await settle()
        first, second = started
        assert first.ended and not second.ended
        assert workers.by_key == {("Sweep", "ns", "a"): second}
        workers.on_event(body("a", uid="u2"), "DELETED", start)
        await settle()
        assert second.ended and workers.by_key == {}
        workers.on_event(body("b"), "DELETED", start)  # gone before it was seen: nothing started
        assert len(started) == 2 and workers.by_key == {}

    asyncio.run(scenario())


def test_stop_all_ends_every_loop_and_cancels_a_pass_that_outlasts_the_timeout() -> None:
    async def scenario() -> None:
        workers = Workers("sweep")
        quick, stuck = Recorder(body("a")), Recorder(body("b"), hang=True)
        workers.on_event(body("a"), "MODIFIED", lambda _: quick)
        workers.on_event(body("b"), "MODIFIED", lambda _: stuck)
        await settle()
        await workers.stop_all(timeout=0.1)
        await settle()
        assert quick.ended and not quick.task.cancelled()
        assert stuck.ended and stuck.task.cancelled()
        assert workers.by_key == {}

    asyncio.run(scenario())


def test_a_sweep_being_deleted_stops_its_worker_and_starts_no_new_one() -> None:
    import kopf

    from tradewind.operator import sweeps

    async def scenario() -> None:
        memo = kopf.Memo(sweep_workers=Workers("sweep"))
        worker = Recorder(body("s"))
        memo.sweep_workers.on_event(body("s"), "MODIFIED", lambda _: worker)
        await settle()
        dying = body("s")
        dying["metadata"]["deletionTimestamp"] = "2026-11-26T16:00:00Z"
        await sweeps.sweep_changed(memo=memo, type="MODIFIED", event={"object": dying})
        await settle()
        assert worker.stopped and worker.ended and memo.sweep_workers.by_key == {}

    asyncio.run(scenario())


def test_a_trainingrun_and_an_rlrun_of_one_name_have_a_worker_each() -> None:
    async def scenario() -> None:
        workers, started = Workers("reconcile"), []
        start = recording_start(started)
        workers.on_event(body("a", kind="TrainingRun"), "ADDED", start)
        workers.on_event(body("a", uid="u2", kind="RLRun"), "ADDED", start)
        await settle()
        training, rl = started
        assert not training.ended and not rl.ended  # neither replaced the other
        assert set(workers.by_key) == {("TrainingRun", "ns", "a"), ("RLRun", "ns", "a")}
        workers.wake(("RLRun", "ns", "a"))
        await settle()
        assert (len(training.seen), len(rl.seen)) == (1, 2)
        await workers.stop_all()

    asyncio.run(scenario())


class Vanishing(Recorder):
    """A worker whose object is gone when asked (`exists`), and says how often it was."""

    asked = 0

    async def exists(self) -> bool:
        self.asked += 1
        return self.metadata_name != "gone"

    @property
    def metadata_name(self) -> str:
        return str(self.body["metadata"]["name"])


def test_a_relist_that_leaves_a_run_out_stops_its_worker_if_it_is_gone() -> None:
    async def scenario() -> None:
        workers = Workers("reconcile")
        workers.listing_quiet = 0.05
        made: dict[str, Vanishing] = {}

        def start(slim: dict[str, Any]) -> Worker:
            made[slim["metadata"]["name"]] = Vanishing(slim)
            return made[slim["metadata"]["name"]]

        for name in ("kept", "gone", "listed"):  # the first listing, at start-up
            workers.on_event(body(name, kind="TrainingRun"), None, start)
        workers.on_event(body("other", kind="RLRun"), "ADDED", start)
        await asyncio.sleep(0.1)
        assert all(w.asked == 0 for w in made.values())  # each was listed
        # The watch expired; kopf lists again: "listed" only (no DELETED for the others).
        workers.on_event(body("listed", kind="TrainingRun"), None, start)
        await asyncio.sleep(0.2)
        assert (made["kept"].asked, made["gone"].asked, made["listed"].asked) == (1, 1, 0)
        assert made["other"].asked == 0  # another kind's listing did not happen
        assert made["gone"].stopped and not made["kept"].stopped
        assert set(workers.by_key) == {
            ("TrainingRun", "ns", "kept"),
            ("TrainingRun", "ns", "listed"),
            ("RLRun", "ns", "other"),
        }
        await workers.stop_all()

    asyncio.run(scenario())


def test_a_worker_that_stopped_itself_is_forgotten_not_a_successor() -> None:
    async def scenario() -> None:
        workers, started = Workers("reconcile"), []
        start = recording_start(started)
        workers.on_event(body("a"), "ADDED", start)
        workers.on_event(body("a", uid="u2"), "ADDED", start)
        await settle()
        first, second = started
        workers.discard(first)  # the old one, already replaced: the new one stays
        assert workers.by_key == {("Sweep", "ns", "a"): second}
        workers.discard(second)
        assert workers.by_key == {}
        await workers.stop_all()
        second.stop()

    asyncio.run(scenario())
