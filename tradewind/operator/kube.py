"""The thin layer that applies decisions to the apiserver (the kubernetes client, sync; the
operator calls it from worker threads)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import urllib.parse
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tradewind.api import GROUP, KINDS, VERSION
from tradewind.api.status import RunStatus
from tradewind.operator import kueue
from tradewind.operator.event_budget import EventBudget
from tradewind.operator.kueue import SUSPENDED_BY_RUN_LABEL

log = logging.getLogger(__name__)
MANAGER = "tradewind-operator"
DEFAULT_TIMEOUT_SECONDS = 30.0
"""How long one apiserver request may take (connect and read) unless the operator's settings
say otherwise (`TRADEWIND_API_TIMEOUT_SECONDS`)."""


class Gone(Exception):
    """The run is no longer there: its status write met 404, or a run of its name with
    another uid (deleted and created again). Its worker stops."""


class NamespaceTerminating(Gone):
    """The run's namespace is being deleted: nothing can be created in it any more, and the
    run goes with it. Its worker stops rather than retry (a run's later event starts one
    that stops again at its first create)."""


def namespace_terminating(exc: ApiException) -> bool:
    """Whether the apiserver refused a create because the namespace is being deleted (403,
    with the NamespaceTerminating cause of its namespace-lifecycle admission)."""
    if exc.status != 403:
        return False
    try:
        causes = json.loads(exc.body or "")["details"]["causes"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


class Refused(Exception):
    """The apiserver refused to create a child (`status`: its HTTP status), or an object of
    the child's name exists that this run does not control. `message` is the apiserver's
    (it names the object); `permanent` when retrying cannot help; `retry_after` in seconds,
    when the apiserver said (429, 503)."""

    def __init__(
        self, status: int, message: str, permanent: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.permanent, self.retry_after = permanent, retry_after


PERMANENT_STATUSES = {400, 422}
"""Refusals of the object itself (invalid, malformed): the same object is refused again. 403
is not among them: quota frees up, a policy can change; 409 is decided by the owner."""


def api_message(exc: ApiException) -> str:
    """The apiserver's own message (its Status body), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return str(message or f"{exc.status} {exc.reason}")


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After seconds of a 429 or 503 (API priority and fairness, an overloaded
    apiserver), if it says."""
    headers = getattr(exc, "headers", None)
    if not isinstance(exc, ApiException) or exc.status not in (429, 503) or not headers:
        return None
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


JSON_PATCH = "application/json-patch+json"
_WORKLOADS_UNREADABLE: set[int] = set()
"""HTTP statuses of Workload reads already warned of (once per process)."""


def _uid_test(uid: str | None, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON patch operations that apply only to the object of that uid."""
    return [{"op": "test", "path": "/metadata/uid", "value": uid}, *ops] if uid else ops


def _uid_test_failed(exc: ApiException) -> bool:
    """Whether a JSON patch was refused by its `test` (422 without a field cause: the object
    of that name has another uid), not by validation (422 naming the fields)."""
    if exc.status != 422:
        return False
    try:
        details = json.loads(exc.body or "").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return not details.get("causes") and not details.get("name")


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The controller ownerReference of an object, if it has one."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((dict(r) for r in refs if r.get("controller")), None)


def conflict(existing: dict[str, Any], manifest: dict[str, Any]) -> Refused | None:
    """None if `existing` (what a 409 found) is the child `manifest` describes: the same
    controller uid. Otherwise why it is not: an earlier run of the same kind and name still
    holds it (it goes with that run: retried), or someone else does (permanent)."""
    ours, theirs = controller_of(manifest), controller_of(existing)
    if ours is None or (theirs is not None and theirs.get("uid") == ours.get("uid")):
        return None
    kind, meta = manifest["kind"], manifest["metadata"]
    what = f'{kind} "{meta["name"]}" already exists'
    if theirs is None:
        return Refused(409, f"{what} and is not controlled by any object; not adopted", True)
    owner = f"{theirs.get('kind')} {theirs.get('name')} (uid {theirs.get('uid')})"
    if (theirs.get("kind"), theirs.get("name")) == (ours["kind"], ours["name"]):
        message = f"{what}, controlled by an earlier {owner}; waiting for it to be deleted"
        return Refused(409, message, False)
    return Refused(409, f"{what}, controlled by {owner}; not adopted", True)


_FAILED_CREATE_LOCK = threading.Lock()


class Kube:
    """Create-if-missing, delete-if-present, status and Event writes; 404/409 are success
    where they mean the cluster already converged (a 409 on create only when the object that
    exists is controlled by the same owner uid). Requests go through the client's
    connection pool and authentication (`request`), not its generated per-endpoint methods:
    those validate a dict body into the client's pydantic models (~1 ms for a Job) only to
    serialise it again, and turn responses into models; only a status write's
    resourceVersion is read here. `custom` is the generated API, for the Sweep controller's
    reads and child runs. Every request, `custom`'s too, gives up after `timeout` seconds.
    Normal Events are posted within `event_budget` (none: all of them)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        event_budget: EventBudget | None = None,
    ) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.event_budget = event_budget
        self.custom = client.CustomObjectsApi(_DefaultTimeout(api_client, timeout))

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        """One request; the response body, or ApiException for a non-2xx status."""
        # reading the body returns the connection to the pool
        return bytes(self.open(method, path, body, content_type).data)

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Any = None,
    ) -> Any:
        """One request whose body the caller reads: urllib3's response (`.data`, or
        `.stream()` for a watch); ApiException for a non-2xx status. `timeout` is the
        client's (seconds, or (connect, read)); this Kube's by default."""
        api = self.api_client
        serialized = api.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(
            *serialized, _request_timeout=self.timeout if timeout is None else timeout
        )
        if not 200 <= response.status <= 299:
            data = bytes(response.response.data)
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        return response.response

    def create(self, manifest: dict[str, Any]) -> None:
        """Create the child unless it exists. Raises Refused when the apiserver refuses it,
        or when the object of its name is controlled by another owner (never adopted). A
        ConfigMap of that name is taken to be ours unread: the operator may not read
        ConfigMaps, and a run's are named with its uid (`builders.config_name`)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        ns, name = meta["namespace"], meta["name"]
        path = _collection(resource_key(manifest), ns)
        try:
            self.request("POST", f"{path}?fieldManager={MANAGER}", manifest)
        except ApiException as exc:
            if namespace_terminating(exc):
                raise NamespaceTerminating(f"namespace {ns} is being deleted") from exc
            if exc.status != 409:
                permanent = exc.status in PERMANENT_STATUSES
                raise Refused(exc.status, api_message(exc), permanent, retry_after(exc)) from exc
            if kind == "ConfigMap":
                return
            try:
                existing = json.loads(self.request("GET", f"{path}/{name}"))
            except ApiException as gone:
                if gone.status != 404:
                    raise
                # deleted between the two requests: created on the next pass
                raise Refused(409, f'{kind} "{name}" was being deleted', False) from exc
            if (refused := conflict(existing, manifest)) is not None:
                raise refused from exc
            return
        log.info("created %s %s/%s", kind, ns, name)

    def delete(self, kind: str, ns: str, name: str, uid: str | None = None) -> None:
        """Delete if present; with `uid`, only that object (not a successor of its name)."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", f"{_collection(kind, ns)}/{name}", body)
        except ApiException as exc:
            if exc.status == 404 or (exc.status == 409 and uid is not None):
                return  # gone already, or another object of that name now
            raise
        log.info("deleted %s %s/%s", kind, ns, name)

    def exists(self, kind: str, ns: str, name: str, uid: str) -> bool:
        """Whether the object of that name is there with that uid."""
        try:
            found = json.loads(self.request("GET", f"{_collection(kind, ns)}/{name}"))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return bool(found["metadata"].get("uid") == uid)

    _failed_creates: dict[str, tuple[float, dict[str, str]]] | None = None
    _failed_create_locks: dict[str, threading.Lock] | None = None

    def failed_create(self, ns: str, uid: str, max_age: float = 0.0) -> str | None:
        """The latest FailedCreate Event the Job controller posted on the Job `uid` (its pods
        were refused: PodSecurity, quota, an invalid pod), as "Error creating: <the
        apiserver's message>"; None if there is none.

        One read of the namespace's FailedCreate Events answers for all its Jobs for
        `max_age` seconds. The apiserver keeps no watch cache of Events: each read scans the
        namespace's Events in etcd, and under load a thousand Jobs wait for their pods at
        once, so a read per Job made that work grow with the square of the runs."""
        with _FAILED_CREATE_LOCK:
            if self._failed_creates is None or self._failed_create_locks is None:
                self._failed_creates, self._failed_create_locks = {}, {}
            lock = self._failed_create_locks.setdefault(ns, threading.Lock())
        with lock:  # one read per namespace at a time; the others wait for its answer
            now = time.monotonic()
            read = self._failed_creates.get(ns)
            if read is None or now - read[0] >= max_age:
                read = (now, self._read_failed_creates(ns))
                self._failed_creates[ns] = read
        return read[1].get(uid)

    def _read_failed_creates(self, ns: str) -> dict[str, str]:
        """The latest FailedCreate message of each object in `ns`, by its uid."""
        selector = urllib.parse.quote("reason=FailedCreate")
        path = f"{_collection('Event', ns)}?fieldSelector={selector}"
        latest: dict[str, tuple[str, str]] = {}
        for event in json.loads(self.request("GET", path)).get("items") or []:
            uid = (event.get("involvedObject") or {}).get("uid")
            meta = event.get("metadata") or {}
            when = str(
                event.get("lastTimestamp")
                or event.get("eventTime")
                or meta.get("creationTimestamp")
            )
            if uid and (uid not in latest or when > latest[uid][0]):
                latest[uid] = (when, str(event.get("message") or ""))
        return {uid: message for uid, (_, message) in latest.items()}

    _workload_reads: dict[str, tuple[float, str | None]] | None = None

    def workload_message(self, ns: str, job_uid: str, max_age: float = 0.0) -> str | None:
        """What Kueue says of the Job `job_uid` it holds suspended (its Workload's message,
        `kueue.workload_message`); "" if it says nothing, None if the Job has no Workload.
        A cluster without Kueue's Workload API (404) or an operator not allowed to read it
        (403) gets "" (nothing known) and one warning. The answer of a read less than
        `max_age` seconds ago for the same Job is given again unread (from the apiserver's
        watch cache when read: a diagnosis need not be the latest word)."""
        now = time.monotonic()
        if self._workload_reads is None:
            self._workload_reads = {}
        reads = self._workload_reads
        if (last := reads.get(job_uid)) is not None and now - last[0] < max_age:
            return last[1]
        if len(reads) > 1024:  # Jobs long admitted or gone
            for uid in [u for u, (when, _) in reads.items() if now - when >= max_age]:
                reads.pop(uid, None)
        message = self._read_workload_message(ns, job_uid)
        reads[job_uid] = (now, message)
        return message

    def _read_workload_message(self, ns: str, job_uid: str) -> str | None:
        selector = urllib.parse.quote(f"{kueue.JOB_UID_LABEL}={job_uid}")
        for version in kueue.WORKLOAD_VERSIONS:
            path = f"/apis/{kueue.WORKLOAD_GROUP}/{version}/namespaces/{ns}/workloads"
            try:
                found = json.loads(
                    self.request("GET", f"{path}?labelSelector={selector}&resourceVersion=0")
                )
            except ApiException as exc:
                if exc.status not in (403, 404):
                    raise
                if exc.status == 403 or version == kueue.WORKLOAD_VERSIONS[-1]:
                    self._warn_unreadable(exc)
                    return ""
                continue
            items = found.get("items") or []
            return kueue.workload_message(items[0]) if items else None
        return None

    @staticmethod
    def _warn_unreadable(exc: ApiException) -> None:
        if exc.status not in _WORKLOADS_UNREADABLE:
            _WORKLOADS_UNREADABLE.add(exc.status)
            log.warning(
                "Kueue Workloads not read (%s %s): queued runs waiting for quota will not "
                "say what Kueue says",
                exc.status,
                exc.reason,
            )

    def set_job_suspended(
        self, ns: str, name: str, suspended: bool, uid: str | None = None
    ) -> None:
        """Suspend or resume the Job for its run's spec.suspend, saying so in its
        SUSPENDED_BY_RUN_LABEL (only a Job the operator suspended is resumed); with `uid`,
        only that Job (not a successor of its name)."""
        label = "/metadata/labels/" + SUSPENDED_BY_RUN_LABEL.replace("~", "~0").replace("/", "~1")
        ops = _uid_test(
            uid,
            [
                {"op": "add", "path": "/spec/suspend", "value": suspended},
                {"op": "add", "path": label, "value": str(suspended).lower()},
            ],
        )
        try:
            self.request("PATCH", f"{_collection('Job', ns)}/{name}", ops, JSON_PATCH)
        except ApiException as exc:
            if exc.status != 404 and not _uid_test_failed(exc):
                raise

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str:
        """Write the whole status of that run (its uid is a precondition: never a
        successor's of the same name; a merge patch on /status cannot say so, a JSON patch's
        `test` can); returns the resourceVersion it produced. Gone if the run is not there."""
        meta = body["metadata"]
        value = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        ops = _uid_test(meta.get("uid"), [{"op": "add", "path": "/status", "value": value}])
        path = f"{_collection(body['kind'], meta['namespace'])}/{meta['name']}/status"
        try:
            response = self.request("PATCH", path, ops, JSON_PATCH)
        except ApiException as exc:
            if exc.status == 404 or _uid_test_failed(exc):
                raise Gone(f"{body['kind']} {meta['namespace']}/{meta['name']}") from exc
            raise
        return str(json.loads(response)["metadata"]["resourceVersion"])

    def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        budget = self.event_budget
        if kind == "Normal" and budget is not None and not budget.take(meta["namespace"]):
            return
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        event: Any = {  # a dict: the client's CoreV1Event costs a conversion each way
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": MANAGER},
        }
        try:
            self.request("POST", _collection("Event", meta["namespace"]), event)
        except ApiException as exc:
            log.warning(
                "event %s on %s/%s not posted: %s",
                reason,
                meta["namespace"],
                meta["name"],
                exc.reason,
            )


class _DefaultTimeout:
    """An ApiClient whose requests that name no timeout (the generated APIs') get one."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        self._client, self._timeout = api_client, timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        timeout = self._timeout if _request_timeout is None else _request_timeout
        return self._client.call_api(
            method, url, header_params, body, post_params, _request_timeout=timeout
        )


COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    **{kind: f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{k.plural}" for kind, k in KINDS.items()},
}


COLLECTIONS |= {
    f"PodGroup.{api.split('/')[0]}": f"/apis/{api}/namespaces/{{ns}}/podgroups"
    for api in ("scheduling.volcano.sh/v1beta1", "scheduling.x-k8s.io/v1alpha1")
}  # gang scheduling (builders.build_pod_group): one kind name, two API groups


def _collection(kind: str, ns: str) -> str:
    return COLLECTIONS[kind].format(ns=ns)


def resource_key(manifest: dict[str, Any]) -> str:
    """The COLLECTIONS key of a manifest: `<kind>.<api group>` where a kind name is in more
    than one group (PodGroup), else its kind."""
    key = f"{manifest['kind']}.{manifest.get('apiVersion', '').rpartition('/')[0]}"
    return key if key in COLLECTIONS else str(manifest["kind"])
