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
    where they mean the cluster already converged. Responses are not turned into the
    client's model objects (`_preload_content=False`): a Job's costs milliseconds, and only
    a status write's resourceVersion is read."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, manifest: dict[str, Any]) -> None:
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        create: Any = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
        }[kind]
        try:
            _read(create(ns, manifest, field_manager=MANAGER, _preload_content=False))
        except ApiException as exc:
            if exc.status != 409:
                raise
            return
        log.info("created %s %s/%s", kind, ns, manifest["metadata"]["name"])

    def delete(self, kind: str, ns: str, name: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Background")
        try:
            if kind == "Job":
                _read(self.batch.delete_namespaced_job(name, ns, body=body, _preload_content=False))
            elif kind == "ConfigMap":
                _read(
                    self.core.delete_namespaced_config_map(
                        name, ns, body=body, _preload_content=False
                    )
                )
            elif kind in KINDS:
                plural = KINDS[kind].plural
                _read(
                    self.custom.delete_namespaced_custom_object(
                        GROUP, VERSION, ns, plural, name, body=body, _preload_content=False
                    )
                )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        log.info("deleted %s %s/%s", kind, ns, name)

    def set_job_suspended(self, ns: str, name: str, suspended: bool) -> None:
        try:
            _read(
                self.batch.patch_namespaced_job(
                    name, ns, {"spec": {"suspend": suspended}}, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, body: dict[str, Any], status: RunStatus) -> str | None:
        """Write the status; returns the resourceVersion it produced (None if the run is gone)."""
        meta = body["metadata"]
        plural = KINDS[body["kind"]].plural
        patch = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        try:
            response = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], plural, meta["name"], patch,
                _preload_content=False,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise
            return None
        return str(json.loads(_read(response))["metadata"]["resourceVersion"])

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
            _read(
                self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
            )
        except ApiException as exc:
            log.warning(
                "event %s on %s/%s not posted: %s",
                reason,
                meta["namespace"],
                meta["name"],
                exc.reason,
            )


def _read(response: Any) -> bytes:
    """The body of a raw (urllib3) response; reading it returns the connection to the pool."""
    return bytes(response.data)
