"""Allocation truth: what the kubelet's PodResources API says about our devices, for claims' `status.allocatedTo`
and for the binder's in-use check before a release."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent import kube
from nodeagent.deviceplugin import podresources
from nodeagent.deviceplugin.errors import PodResourcesError
from nodeagent.errors import KubeError

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


class VmiResolver:
    """(namespace, pod) -> VMI name, read once per pod (a pod never changes its owner); None for other pods."""

    def __init__(self, api: kube.KubeApi) -> None:
        self._api = api
        self._cache: dict[tuple[str, str], str | None] = {}

    def __call__(self, namespace: str, pod: str) -> str | None:
        key = (namespace, pod)
        if key not in self._cache:
            try:
                self._cache[key] = vmi_owner(self._api.get(kube.PODS, pod, namespace=namespace))
            except kube.NotFound:
                return None
            except KubeError:
                log.warning("pod could not be read for allocatedTo", extra={"pod": f"{namespace}/{pod}"})
                return None
            if len(self._cache) > 4096:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]


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
