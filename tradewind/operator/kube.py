"""The thin layer that applies decisions to the apiserver (the kubernetes client, sync; the
operator calls it from worker threads)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tradewind.api import GROUP, KINDS, VERSION
from tradewind.api.status import RunStatus

log = logging.getLogger(__name__)
MANAGER = "tradewind-operator"


class Kube:
    """Create-if-missing, delete-if-present, status and Event writes; 404/409 are success
    where they mean the cluster already converged. Requests go through the client's
    connection pool and authentication (`request`), not its generated per-endpoint methods:
    those validate a dict body into the client's pydantic models (~1 ms for a Job) only to
    serialise it again, and turn responses into models; only a status write's
    resourceVersion is read here. `custom` is the generated API, for the Sweep controller's
    reads and child runs."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        """One request; the response body, or ApiException for a non-2xx status."""
        api = self.api_client
        serialized = api.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*serialized)
        data = bytes(response.response.data)  # reading it returns the connection to the pool
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        return data

    def create(self, manifest: dict[str, Any]) -> None:
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        try:
            self.request("POST", f"{_collection(kind, ns)}?fieldManager={MANAGER}", manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return
        log.info("created %s %s/%s", kind, ns, manifest["metadata"]["name"])

    def delete(self, kind: str, ns: str, name: str) -> None:
        try:
            self.request(
                "DELETE", f"{_collection(kind, ns)}/{name}", {"propagationPolicy": "Background"}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        log.info("deleted %s %s/%s", kind, ns, name)

    def set_job_suspended(self, ns: str, name: str, suspended: bool) -> None:
        try:
            self.request(
                "PATCH",
                f"{_collection('Job', ns)}/{name}",
                {"spec": {"suspend": suspended}},
                content_type="application/strategic-merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str | None:
        """Write the status; returns the resourceVersion it produced (None if the run is gone)."""
        meta = body["metadata"]
        patch = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        path = f"{_collection(body['kind'], meta['namespace'])}/{meta['name']}/status"
        try:
            response = self.request("PATCH", path, patch, "application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise
            return None
        return str(json.loads(response)["metadata"]["resourceVersion"])

    def event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
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


COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    **{kind: f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{k.plural}" for kind, k in KINDS.items()},
}


def _collection(kind: str, ns: str) -> str:
    return COLLECTIONS[kind].format(ns=ns)
