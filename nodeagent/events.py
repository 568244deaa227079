"""Kubernetes Events for what happens to this node's devices and claims.

Our objects are cluster-scoped, and the API server accepts Events about cluster-scoped objects only in `default`
(core/v1 events without eventTime; a 422 "involvedObject.namespace does not match event.namespace" otherwise), which
is also where the kubelet puts Node events and where `kubectl describe` finds them; Events about namespaced objects
go to the object's namespace. An Event is a write, so the reconcilers record one only when something changed; a
failed Event is logged and never fails the reconcile that caused it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import apiclient

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
COMPONENT = "pcidevices-agent"


CLUSTER_SCOPED_EVENTS_NAMESPACE = "default"


class EventRecorder:
    def __init__(
        self,
        api: apiclient.KubeApi,
        *,
        node: str,
        now: Callable[[], str],
        namespace: str = CLUSTER_SCOPED_EVENTS_NAMESPACE,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._node = node
        self._now = now

    def record(self, obj: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        involved_ns = str(meta.get("namespace") or "")
        namespace = involved_ns or self._namespace
        stamp = self._now()
        involved = {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": name,
            "uid": meta.get("uid", ""),
        }
        if involved_ns:
            involved["namespace"] = involved_ns
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT, "host": self._node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._api.create(apiclient.EVENTS, body, namespace=namespace)
        except apiclient.KubeError:
            log.warning("could not record an event", extra={"object": name, "reason": reason}, exc_info=True)
