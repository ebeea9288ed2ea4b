"""The operator's own watches of Jobs and pods (`tradewind.operator.children`): LIST in pages,
WATCH from the list's resourceVersion, bookmarks followed, an expired watch listed again with
what was deleted meanwhile dropped; and workers held until every watch has listed. The watch
talks HTTP to a small server here that answers as the apiserver does."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client

from tradewind.operator import builders
from tradewind.operator.children import SELECTOR, Children, ChildWatch, entry
from tradewind.operator.kube import Kube

RUN = ("TrainingRun", "ns", "r")


def _pod(name: str, phase: str, version: str) -> dict[str, Any]:
    labels = {builders.RUN_LABEL: "r", builders.KIND_LABEL: "TrainingRun"}
    meta = {"name": name, "namespace": "ns", "labels": labels, "resourceVersion": version}
    return {"metadata": meta, "status": {"phase": phase}}


def _page(items: list[dict[str, Any]], version: str, token: str = "") -> bytes:
    return json.dumps(
        {"metadata": {"resourceVersion": version, "continue": token}, "items": items}
    ).encode()


def _stream(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(json.dumps({"type": t, "object": o}).encode() + b"\n" for t, o in events)


class FakeApiserver:
    """Answers GETs of /api/v1/pods from `script`, a function of the query, and records each
    query; a watch it has nothing more for is held open a while, as the apiserver's is."""

    def __init__(self, script: Callable[[dict[str, str]], bytes | None]) -> None:
        self.queries: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                assert url.path == "/api/v1/pods"
                query = dict(urllib.parse.parse_qsl(url.query))
                outer.queries.append(query)
                body = script(query)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if body is None:
                    time.sleep(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kube(self) -> Kube:
        configuration = client.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        return Kube(client.ApiClient(configuration))


def _until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Wait for `condition`; the deadline only bounds a failing test (it has been met in under
    a second, and missed at 10 s on a machine loaded by a 10,000-run bench)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s"
        time.sleep(0.02)


def test_a_watch_lists_in_pages_follows_bookmarks_and_lists_again_when_expired() -> None:
    a0, b0 = _pod("a", "Pending", "3"), _pod("b", "Pending", "4")
    a1 = _pod("a", "Running", "11")

    def script(query: dict[str, str]) -> bytes | None:
        assert query["labelSelector"] == SELECTOR
        if query.get("watch") != "1":
            if len(lists := [q for q in server.queries if q.get("watch") != "1"]) <= 2:
                return _page([a0], "10", "next") if "continue" not in query else _page([b0], "10")
            assert len(lists) == 3 and "continue" not in query
            return _page([b0], "20")  # a was deleted while the watch had expired
        version = query["resourceVersion"]
        if version == "10":
            return _stream(("MODIFIED", a1), ("BOOKMARK", {"metadata": {"resourceVersion": "12"}}))
        if version == "12":
            return _stream(("ERROR", {"kind": "Status", "code": 410, "message": "too old"}))
        assert version == "20"
        return None

    server = FakeApiserver(script)
    seen: list[tuple[str, str | None, Any]] = []
    watch = ChildWatch(server.kube(), "pods", None, lambda *what: seen.append(what))
    watch.start()
    try:
        _until(lambda: sum(isinstance(w[2], list) for w in seen) == 2)
    finally:
        watch.stop()
    listings = [w[2] for w in seen if isinstance(w[2], list)]
    assert [[child for child, _, _ in listing] for listing in listings] == [
        [("ns", "a"), ("ns", "b")],  # both pages, delivered as one listing
        [("ns", "b")],
    ]
    events = [w[2] for w in seen if not isinstance(w[2], list)]
    assert events == [("MODIFIED", *entry("pods", a1))]
    watches = [q["resourceVersion"] for q in server.queries if q.get("watch") == "1"]
    assert watches[:3] == ["10", "12", "20"]  # the bookmark's version, then the new listing's
    assert all(q["allowWatchBookmarks"] == "true" for q in server.queries if q.get("watch") == "1")


def test_a_listing_replaces_its_scope_and_wakes_the_runs_whose_reads_changed() -> None:
    woken: list[Any] = []
    children = Children(wake=woken.append)
    children._unlisted = {("pods", "ns"), ("pods", "other"), ("jobs", "ns")}
    a, b = entry("pods", _pod("a", "Pending", "1")), entry("pods", _pod("b", "Pending", "1"))
    elsewhere = (("other", "c"), ("TrainingRun", "other", "r"), a[2])
    assert children.apply("pods", "ns", [a, b]) == {RUN}
    assert children.apply("pods", "other", [elsewhere]) == {elsewhere[1]}
    assert children.apply("pods", "ns", [a, b]) == set()  # the same again: nothing to wake
    assert children.apply("pods", "ns", [b]) == {RUN}  # a is gone
    assert [p["metadata"]["name"] for p in children.pods.get(RUN)] == ["b"]
    assert children.pods.get(elsewhere[1])  # another namespace's listing left it alone
    assert children.apply("pods", "ns", ("DELETED", *b)) == {RUN}
    assert children.pods.get(RUN) == [] and len(children.pods) == 1


def test_workers_wait_until_every_watch_has_listed_once() -> None:
    children = Children()
    children._unlisted = {("jobs", None), ("pods", None)}
    children.apply("jobs", None, [])
    children.apply("jobs", None, [])  # listed again (expired) before the pods' first listing
    assert not children.listed.is_set()
    children.apply("pods", None, [])
    assert children.listed.is_set()


def test_events_from_the_watch_threads_reach_the_index_on_the_event_loop() -> None:
    async def scenario() -> list[Any]:
        woken: list[Any] = []
        children = Children(wake=woken.append)
        children._loop = asyncio.get_running_loop()
        children._unlisted = {("pods", None)}
        pod = entry("pods", _pod("a", "Running", "1"))
        sender = threading.Thread(
            target=lambda: [children._deliver("pods", None, w) for w in ([], ("ADDED", *pod))]
        )
        sender.start()
        sender.join()
        while not woken:
            await asyncio.sleep(0.01)
        assert children.listed.is_set() and children.pods.get(RUN)
        return woken

    assert asyncio.run(scenario()) == [RUN]
