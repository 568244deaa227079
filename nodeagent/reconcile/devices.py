"""Applying planned device-object actions (create, patch, delete, mark absent) for one kind, with Events."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import apiclient
from nodeagent.events import EventRecorder
from nodeagent.reconcile import plan
from policy import names

log = logging.getLogger(__name__)


def apply_device_actions(
    api: apiclient.KubeApi,
    res: apiclient.Resource,
    actions: Sequence[plan.DeviceAction],
    existing: Mapping[str, dict[str, Any]],
    events: EventRecorder,
    owned: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """Perform the actions; return the objects as the server now has them (by name) for the rest of the pass."""
    out = dict(existing)
    for a in actions:
        if isinstance(a, plan.Create):
            name = a.obj["metadata"]["name"]
            body = {k: v for k, v in a.obj.items() if k != "status"}
            try:
                created = api.create(res, body)
            except apiclient.Conflict:
                # Made by an earlier run that died before writing the status, or someone removed our label.
                created = api.get(res, name)
                meta = a.obj["metadata"]
                owners = meta.get("ownerReferences") or [None]
                fix = plan.metadata_patch(created, meta["labels"][names.LABEL_NODENAME], owners[0])
                if fix:
                    created = api.patch(res, name, {"metadata": fix})
            status = plan.diff_status(created.get("status") or {}, a.obj.get("status") or {}, owned)
            if status:
                created = api.patch(res, name, {"status": status}, subresource="status")
            out[name] = created
            log.info("device object created", extra={"kind": res.kind, "object": name})
            events.record(created, "Normal", "Appeared", f"{res.kind} {name} appeared on the node")
        elif isinstance(a, plan.Patch):
            obj = out[a.name]
            try:
                if a.metadata:
                    obj = api.patch(res, a.name, {"metadata": a.metadata})
                if a.status:
                    obj = api.patch(res, a.name, {"status": a.status}, subresource="status")
            except apiclient.NotFound:
                out.pop(a.name, None)
                continue
            out[a.name] = obj
            if a.became_absent:
                log.info("claimed device vanished; kept as absent", extra={"kind": res.kind, "object": a.name})
                events.record(obj, "Warning", "Absent", f"{res.kind} {a.name} disappeared while claimed; kept")
            if a.driver_changed is not None:
                old, new = a.driver_changed
                events.record(
                    obj, "Normal", "DriverChanged", f"kernel driver changed from {old or 'none'} to {new or 'none'}"
                )
        elif isinstance(a, plan.Delete):
            obj = out.pop(a.name)
            try:
                api.delete(res, a.name)
            except apiclient.NotFound:
                continue
            except apiclient.KubeError:
                out[a.name] = obj
                raise
            log.info("device object deleted", extra={"kind": res.kind, "object": a.name})
            events.record(obj, "Normal", "Disappeared", f"{res.kind} {a.name} disappeared from the node")
    return out
