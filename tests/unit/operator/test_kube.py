"""Kube's decisions about the apiserver's answers, on a stand-in for its one request method:
which refusals are permanent, whose object a 409 found, Retry-After, a gone run."""

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tradewind.api.status import RunStatus
from tradewind.operator import builders
from tradewind.operator.kube import Gone, Kube, NamespaceTerminating, Refused

RUN = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "r", "namespace": "ns", "uid": "new"},
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message})
    exc.headers = headers or {}
    return exc


class Answering(Kube):
    """Kube whose requests get the answers given, in order (an ApiException is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, Any]] = []

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        self.sent.append((method, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return json.dumps(answer).encode()


def _job(owner_uid: str | None, owner_name: str = "r", kind: str = "TrainingRun") -> Any:
    refs = [{"kind": kind, "name": owner_name, "uid": owner_uid, "controller": True}]
    return {"metadata": {"name": "r-0", "ownerReferences": refs if owner_uid else []}}


def _manifest() -> dict[str, Any]:
    owner = builders.owner_reference(RUN)
    return {
        "kind": "Job",
        "metadata": {"name": "r-0", "namespace": "ns", "ownerReferences": [owner]},
    }


def test_an_invalid_child_is_refused_for_good_with_the_apiservers_message() -> None:
    message = 'Job.batch "r-0" is invalid: spec.template.spec.volumes[2].name: Duplicate value'
    with pytest.raises(Refused) as refused:
        Answering(_error(422, message)).create(_manifest())
    assert refused.value.permanent and refused.value.message == message


def test_quota_and_overload_are_retried_and_retry_after_is_read() -> None:
    with pytest.raises(Refused) as quota:
        Answering(_error(403, "exceeded quota")).create(_manifest())
    assert not quota.value.permanent and quota.value.retry_after is None
    with pytest.raises(Refused) as busy:
        Answering(_error(429, "too many requests", {"Retry-After": "3"})).create(_manifest())
    assert not busy.value.permanent and busy.value.retry_after == 3.0


def test_a_create_in_a_namespace_being_deleted_stops_the_run_not_retried() -> None:
    """The namespace-lifecycle admission's refusal (403, cause NamespaceTerminating): the
    run goes with its namespace; retrying it every few seconds only loads the operator."""
    terminating = _error(
        403, "unable to create new content in namespace ns because it is being terminated"
    )
    body = json.loads(terminating.body)
    body["details"] = {
        "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]
    }
    terminating.body = json.dumps(body)
    with pytest.raises(NamespaceTerminating) as stopped:
        Answering(terminating).create(_manifest())
    assert isinstance(stopped.value, Gone)  # its worker stops as for a deleted run


def test_a_409_is_success_only_for_our_own_child() -> None:
    kube = Answering(_error(409, "exists"), _job("new"))
    kube.create(_manifest())  # ours (e.g. created before a crash): converged
    assert [s[0] for s in kube.sent] == ["POST", "GET"]


def test_a_409_on_a_configmap_is_ours_unread_its_name_has_our_uid() -> None:
    manifest = _manifest() | {"kind": "ConfigMap"}
    kube = Answering(_error(409, "exists"))
    kube.create(manifest)  # the operator may not read ConfigMaps
    assert [s[0] for s in kube.sent] == ["POST"]


def test_a_409_on_a_predecessors_child_waits_and_on_a_strangers_fails() -> None:
    with pytest.raises(Refused) as earlier:
        Answering(_error(409, "exists"), _job("old")).create(_manifest())
    assert (
        not earlier.value.permanent and "earlier TrainingRun r (uid old)" in earlier.value.message
    )
    with pytest.raises(Refused) as foreign:
        Answering(_error(409, "exists"), _job("x", owner_name="other")).create(_manifest())
    assert foreign.value.permanent and "not adopted" in foreign.value.message
    with pytest.raises(Refused) as orphan:
        Answering(_error(409, "exists"), _job(None)).create(_manifest())
    assert orphan.value.permanent


def test_a_status_write_is_for_that_uid_only_and_a_gone_run_says_so() -> None:
    kube = Answering({"metadata": {"resourceVersion": "9"}})
    assert kube.patch_status(RUN, RunStatus(phase="Pending")) == "9"
    test, write = kube.sent[0][2]
    assert test == {"op": "test", "path": "/metadata/uid", "value": "new"}  # a precondition
    assert write["path"] == "/status" and write["value"]["phase"] == "Pending"  # whole
    with pytest.raises(Gone):
        Answering(_error(404, "not found")).patch_status(RUN, RunStatus())
    # what the apiserver answers when the test fails: a run of that name with another uid
    tested = ApiException(status=422, reason="Unprocessable Entity")
    tested.body = json.dumps(
        {"message": "the server rejected our request due to an error in our request", "details": {}}
    )
    with pytest.raises(Gone):
        Answering(tested).patch_status(RUN, RunStatus())
    invalid = _error(422, 'TrainingRun.tradewind.dev "r" is invalid')
    invalid.body = json.dumps({"message": "is invalid", "details": {"name": "r", "causes": [{}]}})
    with pytest.raises(ApiException):  # a status the schema refuses is a failure, not Gone
        Answering(invalid).patch_status(RUN, RunStatus())


def test_a_delete_with_a_uid_spares_a_successor_of_the_same_name() -> None:
    kube = Answering(_error(409, "Precondition failed: UID in precondition"))
    kube.delete("Job", "ns", "r-0", uid="job-uid")  # not ours any more: nothing to do
    assert kube.sent[0][2]["preconditions"] == {"uid": "job-uid"}


def _failed_create(uid: str, when: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "involvedObject": {"uid": uid},
        "lastTimestamp": when,
        "message": message,
    }


def test_the_latest_failed_create_event_of_each_job_is_read() -> None:
    events = {
        "items": [
            _failed_create("job-uid", "2026-01-01T00:00:01Z", "old"),
            _failed_create("job-uid", "2026-01-01T00:00:09Z", "new"),
            _failed_create("other-uid", "2026-01-01T00:00:05Z", "other's"),
        ]
    }
    kube = Answering(events)
    assert kube.failed_create("ns", "job-uid") == "new"
    assert kube.sent[0][1].endswith("/namespaces/ns/events?fieldSelector=reason%3DFailedCreate")
    assert Answering({"items": []}).failed_create("ns", "job-uid") is None


def test_one_read_of_failed_creates_answers_for_every_job_of_the_namespace_a_while() -> None:
    first = {"items": [_failed_create("a", "2026-01-01T00:00:01Z", "refused a")]}
    later = {"items": [_failed_create("b", "2026-01-01T00:00:02Z", "refused b")]}
    kube = Answering(first, {"items": []}, later)
    assert kube.failed_create("ns", "a", max_age=60) == "refused a"
    assert kube.failed_create("ns", "b", max_age=60) is None  # the same read answers
    assert kube.failed_create("other", "c", max_age=60) is None  # its own namespace's read
    assert [path for _, path, _ in kube.sent][1].startswith("/api/v1/namespaces/other/")
    assert kube.failed_create("ns", "b", max_age=0) == "refused b"  # too old: read again
    assert len(kube.sent) == 3


def test_every_request_has_a_timeout() -> None:
    seen: list[Any] = []

    class Client:
        def param_serialize(self, **kw: Any) -> tuple[Any, ...]:
            return ("GET", "/x", {}, None, None)

        def call_api(self, *args: Any, _request_timeout: Any = None) -> Any:
            seen.append(_request_timeout)

            class Response:
                status = 200

                class response:
                    data = b"{}"

            return Response()

    kube = Kube(Client(), timeout=12.0)  # type: ignore[arg-type]
    kube.request("GET", "/x")
    kube.custom.api_client.call_api("GET", "/y")  # the generated API's path
    assert seen == [12.0, 12.0]
