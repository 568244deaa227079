"""Discovery: the node's PCI functions and USB devices as the PCIDevice/USBDevice objects the agent writes.

`discover()` reads (through the SysfsRoot) and `build_*()` are pure constructors, so tests can check the naming of
any synthetic function without a tree. Objects are complete (apiVersion, kind, metadata, spec, status) and carry
upstream's fields plus ours (subsystem ids, revision, NUMA node, reset methods, IOMMU group members, host-critical).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from nodeagent.errors import DiscoveryError
from nodeagent.hostcritical import HostCritical, scan_host_critical
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs import pci as pci_scan
from nodeagent.sysfs import usb as usb_scan
from nodeagent.sysfs.pci import HostPCIFunction
from nodeagent.sysfs.root import SysfsRoot
from nodeagent.sysfs.usb import HostUSBDevice
from policy import names

log = logging.getLogger(__name__)


class GroupMember(TypedDict):
    address: str
    bridge: bool


class ObjectMeta(TypedDict):
    name: str
    labels: dict[str, str]


class PCIDeviceStatus(TypedDict, total=False):
    address: str
    vendorId: str
    deviceId: str
    classId: str
    iommuGroup: str
    nodeName: str
    resourceName: str
    pooledResourceName: str
    description: str
    kernelDriverInUse: str
    subsystemVendorId: str
    subsystemDeviceId: str
    revision: str
    numaNode: int
    resetMethods: list[str]
    iommuGroupMembers: list[GroupMember]
    hostCritical: bool
    hostCriticalReasons: list[str]
    hostWarnings: list[str]


class PCIDevice(TypedDict):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]
    status: PCIDeviceStatus


class USBDeviceStatus(TypedDict, total=False):
    vendorID: str
    productID: str
    nodeName: str
    resourceName: str
    devicePath: str
    description: str
    pciAddress: str
    classType: str
    enabled: bool
    busNum: int
    devNum: int
    portPath: str
    serial: str


class USBDevice(TypedDict):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    status: USBDeviceStatus


@dataclass(frozen=True)
class Inventory:
    """What one discovery found: the objects, and the raw host facts they were built from."""

    pci_devices: list[PCIDevice]
    usb_devices: list[USBDevice]
    functions: list[HostPCIFunction]
    usb: list[HostUSBDevice]
    critical: HostCritical

    def to_json(self) -> dict[str, Any]:
        return {"pciDevices": list(self.pci_devices), "usbDevices": list(self.usb_devices)}


def group_members(functions: Iterable[HostPCIFunction]) -> dict[str, list[GroupMember]]:
    """IOMMU group -> every function in it (bridges included, flagged), in address order."""
    groups: dict[str, list[GroupMember]] = {}
    for fn in functions:
        if fn.iommu_group is not None:
            groups.setdefault(fn.iommu_group, []).append({"address": fn.address, "bridge": fn.bridge})
    for members in groups.values():
        members.sort(key=lambda m: m["address"])
    return groups


_ModelKey = tuple[str, str, str, str, str, str]


def _model_status(fn: HostPCIFunction, db: NamesDatabases, node: str) -> PCIDeviceStatus:
    """The status fields every function of one model shares (ids, names, node), in the object's field order, with
    placeholders where each function differs. Servers repeat models, so this is built once per model and copied."""
    ids = db.pci
    pooled = names.pci_resource_name(*ids.names(fn.vendor_id, fn.device_id), fn.device_id)
    return {
        "address": "",
        "vendorId": fn.vendor_id,
        "deviceId": fn.device_id,
        "classId": fn.class_id,
        "iommuGroup": "",
        "nodeName": node,
        "resourceName": pooled,
        "pooledResourceName": pooled,  # kept when a claim offers the device under its per-device name
        "description": names.pci_description(
            ids.lspci_class(fn.class_code), ids.lspci_vendor(fn.vendor_id), ids.lspci_device(fn.vendor_id, fn.device_id)
        ),
        "kernelDriverInUse": "",
        "subsystemVendorId": fn.subsystem_vendor_id,
        "subsystemDeviceId": fn.subsystem_device_id,
        "revision": fn.revision,
    }


def build_pcidevice(
    fn: HostPCIFunction,
    db: NamesDatabases,
    node: str,
    *,
    members: Sequence[GroupMember] = (),
    reasons: Sequence[str] = (),
    warnings: Sequence[str] = (),
    model_cache: dict[_ModelKey, PCIDeviceStatus] | None = None,
) -> PCIDevice:
    """One PCIDevice; `model_cache` (one per scan) shares the per-model naming work between functions."""
    key = fn[1:7]  # vendor, device, class, revision, subsystem vendor and device: one slice of the tuple
    model = model_cache.get(key) if model_cache is not None else None
    if model is None:
        model = _model_status(fn, db, node)
        if model_cache is not None:
            model_cache[key] = model
    address, driver, group, numa, resets = fn.address, fn.driver, fn.iommu_group, fn.numa_node, fn.reset_methods
    status = model.copy()  # keeps the field order; the per-function fields below replace their placeholders
    status["address"] = address
    status["iommuGroup"] = group or ""
    status["kernelDriverInUse"] = driver or ""
    status["resetMethods"] = list(resets)
    status["iommuGroupMembers"] = list(members)
    status["hostCritical"] = bool(reasons)
    status["hostCriticalReasons"] = list(reasons)
    if numa is not None:
        status["numaNode"] = numa
    if warnings:
        status["hostWarnings"] = list(warnings)
    return {
        "apiVersion": names.API_VERSION,
        "kind": "PCIDevice",
        "metadata": {"name": names.pcidevice_name(node, address), "labels": {names.LABEL_NODENAME: node}},
        "spec": {},
        "status": status,
    }


def build_usbdevice(dev: HostUSBDevice, db: NamesDatabases, node: str) -> USBDevice:
    ids = db.usb
    name = names.usbdevice_name(node, dev.vendor_id, dev.product_id, dev.bus, dev.devnum)
    status: USBDeviceStatus = {
        "vendorID": dev.vendor_id,
        "productID": dev.product_id,
        "nodeName": node,
        "resourceName": names.usb_resource_name(name),
        "devicePath": dev.device_path,
        "description": names.usb_description(
            dev.vendor_id,
            dev.product_id,
            *ids.names(dev.vendor_id, dev.product_id),
            dev.product_string,
        ),
        "pciAddress": dev.controller_address or "",
        "classType": names.usb_class_type(dev.device_class, dev.first_interface_class),
        "enabled": False,
        "busNum": dev.bus,
        "devNum": dev.devnum,
        "portPath": dev.port_path,
    }
    if dev.serial:
        status["serial"] = dev.serial
    return {
        "apiVersion": names.API_VERSION,
        "kind": "USBDevice",
        "metadata": {"name": name, "labels": {names.LABEL_NODENAME: node}},
        "status": status,
    }


def build_inventory(
    functions: Sequence[HostPCIFunction],
    usb: Sequence[HostUSBDevice],
    critical: HostCritical,
    db: NamesDatabases,
    node: str,
) -> Inventory:
    """Pure: objects from host facts. Bridges are members of IOMMU groups but not objects of their own."""
    groups = group_members(functions)
    reasons = critical.reasons
    warnings: Mapping[str, list[str]] = critical.warnings or {}
    cache: dict[_ModelKey, PCIDeviceStatus] = {}
    no_members: list[GroupMember] = []
    pci_objects = [
        build_pcidevice(
            fn,
            db,
            node,
            members=groups.get(fn.iommu_group, no_members) if fn.iommu_group is not None else no_members,
            reasons=reasons.get(fn.address, ()),
            warnings=warnings.get(fn.address, ()),
            model_cache=cache,
        )
        for fn in functions
        if not fn.bridge
    ]
    usb_objects = [build_usbdevice(d, db, node) for d in usb]
    return Inventory(pci_objects, usb_objects, list(functions), list(usb), critical)


def discover(root: SysfsRoot, db: NamesDatabases, node: str, node_ip: str | None = None) -> Inventory:
    """Scan PCI, USB and host-critical state under `root`; raise DiscoveryError only if there is no PCI bus."""
    if not root.exists(pci_scan.PCI_DEVICES):
        raise DiscoveryError(f"no {pci_scan.PCI_DEVICES} under {root.prefix}")
    functions = pci_scan.scan_pci(root)
    usb = usb_scan.scan_usb(root)
    critical = scan_host_critical(root, functions, node_ip)
    if not critical.root_traced:
        log.warning("the root filesystem could not be traced to a PCI device", extra={"root": root.prefix})
    return build_inventory(functions, usb, critical, db, node)
