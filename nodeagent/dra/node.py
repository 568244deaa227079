"""The DRA side of one node's reconcile pass: what to publish, the slices, the drivers' tables, what is held.

The pass hands over the claims that offer their device through DRA once they are bound (`pci()`/`usb()` build the
published devices from the claim, the device object and sysfs facts), then `publish()` writes the slices of both
drivers and updates the drivers' tables in one step. Devices whose claim is being deleted are `withdraw()`n before
any claim is reconciled, so a device on its way back to its driver is never offered. `holders()` and `pods_of()`
answer for status.allocatedTo and the release's in-use check from the CDI specs of prepared claims.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from nodeagent.dra import model, slices
from nodeagent.dra.driver import DraDriver
from policy import dra

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class DraNode:
    def __init__(
        self,
        node: str,
        drivers: Mapping[str, DraDriver],
        store: slices.SliceStore,
        *,
        pcie_root: Callable[[str], str | None] = lambda address: None,
        vfio_cdev: Callable[[str, int], str | None] = lambda address, group: None,
    ) -> None:
        self.node = node
        self.drivers = drivers
        self._store = store
        self._pcie_root = pcie_root
        self._vfio_cdev = vfio_cdev
        self._published: list[model.PublishedDevice] = []

    # -- what to publish --------------------------------------------------------------------------------------------

    def pci(
        self, claim: Obj, device: Obj, *, owner: str, resource_name: str, group: int, functions: Sequence[str]
    ) -> model.PublishedDevice:
        st = device.get("status") or {}
        address = str(st.get("address", ""))
        numa = st.get("numaNode")
        return model.build_pci(
            node=self.node,
            object_name=str(device["metadata"]["name"]),
            owner=owner,
            address=address,
            vendor_id=str(st.get("vendorId", "")),
            device_id=str(st.get("deviceId", "")),
            class_id=str(st.get("classId", "")),
            iommu_group=group,
            numa_node=numa if isinstance(numa, int) else None,
            pcie_root=self._pcie_root(address),
            resource_name=resource_name,
            group_functions=tuple(functions) or (address,),
            vfio_cdev=self._vfio_cdev(address, group),
        )

    def usb(self, claim: Obj, device: Obj, *, owner: str, resource_name: str) -> model.PublishedDevice | None:
        st = device.get("status") or {}
        bus, devnum = st.get("busNum"), st.get("devNum")
        if not isinstance(bus, int) or not isinstance(devnum, int):
            return None
        return model.build_usb(
            node=self.node,
            object_name=str(device["metadata"]["name"]),
            owner=owner,
            vendor_id=str(st.get("vendorID", "")),
            product_id=str(st.get("productID", "")),
            bus=bus,
            devnum=devnum,
            controller=str(st.get("pciAddress", "")),
            resource_name=resource_name,
        )

    # -- slices and tables --------------------------------------------------------------------------------------------

    def withdraw(self, object_names: Set[str]) -> None:
        """Stop offering these devices at once (their claims are being deleted), before any release."""
        kept = [d for d in self._published if d.object_name not in object_names]
        if len(kept) != len(self._published):
            self.publish(kept)

    def publish(self, devices: Sequence[model.PublishedDevice], owner: Mapping[str, Any] | None = None) -> int:
        """Write both drivers' slices (nothing when unchanged) and their tables; returns the number of writes."""
        self._published = list(devices)
        writes = 0
        for name, driver in self.drivers.items():
            mine = [d for d in devices if d.driver == name]
            driver.publish(mine)  # the table first: nothing is prepared from a slice about to change
            writes += len(slices.publish(self._store, self.node, name, mine, owner))
        return writes

    # -- what prepared claims hold ----------------------------------------------------------------------------------

    def holders(self, object_name: str) -> list[dict[str, str]]:
        """status.allocatedTo entries for a device: the pods each prepared claim was reserved for."""
        out: list[dict[str, str]] = []
        for driver in self.drivers.values():
            for prepared in driver.holders().get(object_name, []):
                out.extend({"pod": pod, "resourceClaim": prepared.claim} for pod in prepared.pods)
        return out

    def pods_of(self, object_name: str) -> tuple[str, ...]:
        """What holds a device, for the binder's in-use check ("resourceclaim <ns>/<name>")."""
        held = [p for driver in self.drivers.values() for p in driver.holders().get(object_name, [])]
        return tuple(sorted(f"resourceclaim {p.claim}" for p in held))


def drivers_of(*drivers: DraDriver) -> dict[str, DraDriver]:
    return {d.driver: d for d in drivers if d.driver in dra.DRIVERS}
