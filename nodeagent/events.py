"""Kubernetes Events for what happens to this node's devices and claims, in the agent's namespace.

An Event is a write, so the reconcilers record one only when something changed; a failed Event is logged and
never fails the reconcile that caused it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from nodeagent import kube
from nodeagent.errors import KubeError

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
COMPONENT = "pcidevices-agent"


class EventRecorder:
    def __init__(self, api: kube.KubeApi, *, namespace: str, node: str, now: Callable[[], str]) -> None:
        self._api = api
        self._namespace = namespace
        self._node = node
        self._now = now

    def record(self, obj: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        stamp = self._now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": self._namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""),
                "kind": obj.get("kind", ""),
                "name": name,
                "uid": meta.get("uid", ""),
            },
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
            self._api.create(kube.EVENTS, body, namespace=self._namespace)
        except KubeError:
            log.warning("could not record an event", extra={"object": name, "reason": reason}, exc_info=True)
