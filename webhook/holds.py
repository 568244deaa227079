"""Exclusivity that holds under parallel requests: one Lease per device names the requester whose VMs may name it.

The rules check "no other requester's VM names the device" against the watch-fed view, which cannot see a VM that
another replica (or another worker, or this one a millisecond ago) has just admitted: six parallel creates could all
pass. The single point of truth is the API server's compare-and-swap: before a validating answer that lets an object
name a device exactly, the webhook makes the requester the holder of `coordination.k8s.io/v1` Lease
`pcidevices-hold-<device>` in its own namespace: create-if-absent, or a resourceVersion-conditional update when the
holder has let go. Only one of two racing requests wins either write; the other is denied with the holder's name.

A holder has let go when no VM or VMI of that requester names the device in the view any more and the Lease is older
than `grace_s` (a VM admitted moments ago may not be in this process's view yet). Leases are never deleted: there is
at most one per device ever named exactly (small objects, as many as devices), and a stale one is taken over by the
next requester. Dry-run requests read but never write (the configurations declare `sideEffects: NoneOnDryRun`).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import apiclient
from policy import decision, messages, names, snapshot
from policy.decision import Decision, Hold

log = logging.getLogger(__name__)

PREFIX = "pcidevices-hold-"
LABEL = f"{names.GROUP}/hold"
ANNOTATION_DEVICE = f"{names.GROUP}/device"
ANNOTATION_WORKLOAD = f"{names.GROUP}/workload"
_NAME_LIMIT = 253


class LeaseApi(apiclient.Gets, apiclient.Creates, apiclient.Replaces, Protocol):
    """The calls holds make (apiclient.client.Client; an in-memory fake in unit tests)."""


def lease_name(device_kind: str, device: str) -> str:
    """`pcidevices-hold-<kind initial>-<device>`, hashed when that would not fit an object name."""
    name = f"{PREFIX}{device_kind[:3]}-{device}"
    if len(name) <= _NAME_LIMIT:
        return name
    return f"{PREFIX}{device_kind[:3]}-{hashlib.sha256(device.encode()).hexdigest()[:40]}"


class Holds:
    def __init__(
        self,
        api: Callable[[], LeaseApi],
        namespace: str,
        view: snapshot.ClusterView,
        *,
        grace_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        attempts: int = 3,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._view = view
        self._grace = grace_s
        self._clock = clock
        self._attempts = attempts

    def take(self, holds: Iterable[Hold], *, dry_run: bool) -> Decision | None:
        """None when every hold is the requester's now; otherwise the denial that names the holder."""
        for hold in sorted(holds, key=lambda h: (h.device_kind, h.device)):
            denial = self._take_one(hold, dry_run=dry_run)
            if denial is not None:
                return denial
        return None

    def _take_one(self, hold: Hold, *, dry_run: bool) -> Decision | None:
        api = self._api()
        name, ns = lease_name(hold.device_kind, hold.device), self._namespace
        for _ in range(self._attempts):
            try:
                lease = api.get(apiclient.LEASES, name, namespace=ns)
            except apiclient.NotFound:
                if dry_run:
                    return None
                try:
                    api.create(apiclient.LEASES, self._body(hold, None), namespace=ns)
                    return None
                except apiclient.Conflict:
                    continue  # someone created it first: read who
                except apiclient.KubeError as e:
                    if e.status == 409:
                        continue
                    raise
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            if holder == hold.requester:
                return None
            workload = str((lease.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_WORKLOAD, ""))
            if self._still_held(hold, holder, spec):
                return _denied(hold, holder, workload)
            if dry_run:
                return None
            try:
                api.replace(apiclient.LEASES, name, self._body(hold, lease), namespace=ns)
                log.info("took over a device hold", extra={"device": hold.device, "from": holder, "to": hold.requester})
                return None
            except apiclient.Conflict:
                continue
        return _denied(hold, "another requester", "a request made at the same time")

    def _still_held(self, hold: Hold, holder: str, spec: Mapping[str, Any]) -> bool:
        if not holder:
            return False
        if _age_s(spec.get("renewTime") or spec.get("acquireTime"), self._clock()) < self._grace:
            return True
        device = (
            self._view.pcidevice(hold.device) if hold.device_kind == "pcidevice" else self._view.usbdevice(hold.device)
        )
        if device is None or not device.resource_name:
            return False
        return any(
            w.requester is not None and w.requester.username == holder and not w.deleting
            for w in self._view.workloads_naming(device.resource_name)
        )

    def _body(self, hold: Hold, current: Mapping[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(self._clock())
        meta: dict[str, Any] = {
            "name": lease_name(hold.device_kind, hold.device),
            "namespace": self._namespace,
            "labels": {LABEL: "true", "app.kubernetes.io/part-of": "pcidevices"},
            "annotations": {ANNOTATION_DEVICE: f"{hold.device_kind}/{hold.device}", ANNOTATION_WORKLOAD: hold.workload},
        }
        if current is not None:
            meta["resourceVersion"] = current.get("metadata", {}).get("resourceVersion", "")
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {"holderIdentity": hold.requester, "acquireTime": now, "renewTime": now},
        }


def _denied(hold: Hold, holder: str, workload: str) -> Decision:
    kind, _, key = hold.workload.partition(" ")
    return decision.deny(
        "A9",
        messages.HOLD_TAKEN.format(
            kind=kind,
            name=messages.shown(key),
            device_kind=hold.device_kind,
            device=messages.shown(hold.device),
            holder=messages.shown(holder),
            workload=workload or "an earlier request",
        ),
    )


def _micro_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age_s(stamp: object, now: float) -> float:
    """Seconds since a Lease MicroTime; a missing or unreadable stamp counts as old."""
    if not isinstance(stamp, str):
        return float("inf")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            then = datetime.datetime.strptime(stamp, fmt).replace(tzinfo=datetime.UTC).timestamp()
        except ValueError:
            continue
        return now - then
    return float("inf")
