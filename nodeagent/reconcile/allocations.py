"""Allocation truth: what the kubelet's PodResources API says about our devices, for claims' `status.allocatedTo`
and for the binder's in-use check before a release."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import apiclient
from nodeagent.deviceplugin import podresources
from nodeagent.deviceplugin.errors import PodResourcesError
from nodeagent.reconcile import plan
from policy import hostdevices
from policy.objects import MalformedObject

log = logging.getLogger(__name__)

Lister = Callable[[], Sequence[podresources.DeviceAllocation]]


@dataclass(frozen=True)
class Allocations:
    """One reading of the kubelet: (resource name, device id) -> holders; `known` is False when it could not be read."""

    index: Mapping[tuple[str, str], tuple[podresources.Holder, ...]] = field(default_factory=dict)
    known: bool = False

    def allocated_to(self, resource_name: str, device_id: str) -> list[podresources.AllocatedTo]:
        return podresources.build_allocated_to(self.index, resource_name, device_id)

    def allocated_to_with_vmi(
        self, resource_name: str, device_id: str, vmi_of: Callable[[str, str], str | None]
    ) -> list[podresources.AllocatedTo]:
        """allocatedTo entries with `vmi` (namespace/name) where the pod belongs to a VirtualMachineInstance."""
        out = []
        for entry in self.allocated_to(resource_name, device_id):
            ns, _, pod = entry["pod"].partition("/")
            vmi = vmi_of(ns, pod)
            if vmi:
                entry = podresources.AllocatedTo(pod=entry["pod"], container=entry["container"], vmi=f"{ns}/{vmi}")
            out.append(entry)
        return out

    def pods_of(self, device_id: str) -> tuple[str, ...]:
        """Pods (namespace/name) holding this device id under any resource name (the binder's in-use check); an
        unreadable kubelet counts as a holder, so nothing is released on a guess."""
        if not self.known:
            return ("unknown: the kubelet's PodResources API could not be read",)
        return tuple(
            sorted({f"{h.namespace}/{h.pod}" for (_, dev), hs in self.index.items() if dev == device_id for h in hs})
        )


def vmi_owner(pod: Mapping[str, Any]) -> str | None:
    """The VirtualMachineInstance that owns a (virt-launcher) pod, from its controller ownerReference."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "VirtualMachineInstance" and str(ref.get("apiVersion", "")).startswith("kubevirt.io/"):
            return str(ref.get("name", "")) or None
    return None


@dataclass(frozen=True)
class PodOwner:
    """What a pod's ownerReferences say: the VMI it shows as its owner (allocatedTo's `vmi`), and the uid of the
    VMI its controller reference names (the audit's evidence; "" when none)."""

    vmi: str | None
    controller_uid: str = ""
    controller: str = ""  # the name of that controller VMI


class VmiResolver:
    """(namespace, pod) -> its VMI, read once per pod while the kubelet reports it; and whether the kubelet's
    allocation to it is the one the webhook admitted (the allocation audit, `plan.admitted_launcher`).

    A pod's ownerReferences can change and a name can be reused, so a pod's entry lives only while the kubelet
    keeps reporting that pod (`prune`); a VMI is keyed by its uid, whose record and devices the webhook fixed when
    it admitted it."""

    def __init__(self, api: apiclient.KubeApi) -> None:
        self._api = api
        self._cache: dict[tuple[str, str], PodOwner] = {}
        self._vmis: dict[tuple[str, str, str], hostdevices.Workload | None] = {}

    def owner(self, namespace: str, pod: str) -> PodOwner | None:
        """None when the pod cannot be read (gone, or not allowed): nothing is concluded about it."""
        key = (namespace, pod)
        if key not in self._cache:
            try:
                obj = self._api.get(apiclient.PODS, pod, namespace=namespace)
            except apiclient.NotFound:
                return None
            except apiclient.KubeError:
                log.warning("pod could not be read for allocatedTo", extra={"pod": f"{namespace}/{pod}"})
                return None
            controller_uid = plan.launcher_uid(obj)
            controller = ""
            for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
                if controller_uid and ref.get("uid") == controller_uid:
                    controller = str(ref.get("name", ""))
            self._cache[key] = PodOwner(vmi_owner(obj), controller_uid, controller)
            if len(self._cache) > 4096:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def __call__(self, namespace: str, pod: str) -> str | None:
        found = self.owner(namespace, pod)
        return found.vmi if found is not None else None

    def _vmi(self, namespace: str, name: str, uid: str) -> hostdevices.Workload | None:
        key = (namespace, name, uid)
        if key not in self._vmis:
            try:
                obj = self._api.get(apiclient.VIRTUALMACHINEINSTANCES, name, namespace=namespace)
            except apiclient.NotFound:
                self._vmis[key] = None
                return None
            try:
                self._vmis[key] = hostdevices.Workload.from_dict(dict(obj, kind=hostdevices.VMI))
            except MalformedObject:
                self._vmis[key] = None
            if len(self._vmis) > 4096:
                self._vmis.pop(next(iter(self._vmis)))
        return self._vmis[key]

    def admitted(self, namespace: str, pod: str, resource: str) -> bool | None:
        """Whether the pod is the launcher pod of a VMI the webhook admitted for `resource`; None when the pod or its
        VMI cannot be read (nothing is concluded; a VMI that is gone is not admitted)."""
        found = self.owner(namespace, pod)
        if found is None:
            return None
        if not found.controller_uid:
            return False
        try:
            vmi = self._vmi(namespace, found.controller, found.controller_uid)
        except apiclient.KubeError:
            log.warning("vmi could not be read for the allocation audit", extra={"pod": f"{namespace}/{pod}"})
            return None
        return plan.admitted_launcher(vmi, found.controller_uid, resource)

    def prune(self, pods: Set[tuple[str, str]]) -> None:
        """Forget pods the kubelet no longer reports (a later pod of the same name is read afresh)."""
        for pod in [k for k in self._cache if k not in pods]:
            del self._cache[pod]
        live = {(ns, o.controller, o.controller_uid) for (ns, _), o in self._cache.items()}
        for vmi in [k for k in self._vmis if k not in live]:
            del self._vmis[vmi]


def socket_lister(socket_path: str, *, timeout_s: float = 5.0) -> Lister:
    def lister() -> Sequence[podresources.DeviceAllocation]:
        return podresources.list_allocations(socket_path, timeout_s=timeout_s)

    return lister


def read_allocations(lister: Lister | None, socket_path: str | None = None) -> Allocations:
    """Ask the kubelet; without a kubelet (no socket) nothing is allocated, and a failed read is `known=False`."""
    if lister is None or (socket_path is not None and not os.path.exists(socket_path)):
        return Allocations({}, known=True)
    try:
        return Allocations(podresources.index_allocations(lister()), known=True)
    except PodResourcesError:
        log.warning("pod resources could not be read", exc_info=True)
        return Allocations({}, known=False)


class AllocationPoller:
    """The kubelet does not announce allocations: poll PodResources and nudge the loop when the reading changes."""

    def __init__(self, read: Callable[[], Allocations], nudge: Callable[[], None], *, interval_s: float) -> None:
        self._read = read
        self._nudge = nudge
        self._interval_s = interval_s
        self._last: Allocations | None = None

    def poll(self) -> bool:
        now = self._read()
        changed = now != self._last  # the first reading counts as a change: the loop may have read before it
        self._last = now
        if changed:
            self._nudge()
        return changed

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception:  # the poller never dies: allocatedTo would silently go stale
                log.exception("pod resources poll failed")
