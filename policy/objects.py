"""Slim, frozen views of our four kinds: only the fields the rules read.

`from_dict` is cheap (the webhook's cache holds 100,000 of these) and tolerant: unknown fields are ignored and
missing ones take empty defaults. It raises MalformedObject only when the object has no usable name or a field the
rules read has the wrong type. Values are not validated here (a bad address is kept as given); the rules check
what they use (A11) so that the denial can say which field is wrong.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import names

FINALIZER_AGENT = f"{names.GROUP}/agent"
USB_CONTROLLER_CLASS_PREFIX = "0c03"


class MalformedObject(ValueError):
    """An object whose name or a field the rules need has the wrong type."""


@dataclass(frozen=True, slots=True)
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str

    @classmethod
    def from_dict(cls, d: object) -> OwnerReference:
        m = as_mapping(d, "metadata.ownerReferences[]")
        return cls(
            api_version=_s(m, "apiVersion", "ownerReferences[].apiVersion"),
            kind=_s(m, "kind", "ownerReferences[].kind"),
            name=_s(m, "name", "ownerReferences[].name"),
            uid=_s(m, "uid", "ownerReferences[].uid"),
        )


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One entry of PCIDevice.status.iommuGroupMembers; bridges are exempt from group completeness."""

    address: str
    bridge: bool


@dataclass(frozen=True, slots=True)
class Meta:
    """The metadata the rules read."""

    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    finalizers: tuple[str, ...]
    owner_references: tuple[OwnerReference, ...]
    deleting: bool

    @classmethod
    def from_dict(cls, obj: object) -> Meta:
        o = as_mapping(obj, "object")
        m = as_mapping(o.get("metadata"), "metadata")
        name = m.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedObject("metadata.name must be a non-empty string")
        refs = m.get("ownerReferences")
        if refs is not None and not isinstance(refs, list):
            raise MalformedObject("metadata.ownerReferences must be a list")
        return cls(
            name=name,
            uid=_s(m, "uid", "metadata.uid"),
            labels=_str_map(m.get("labels"), "metadata.labels"),
            annotations=_str_map(m.get("annotations"), "metadata.annotations"),
            finalizers=_str_tuple(m.get("finalizers"), "metadata.finalizers"),
            owner_references=tuple(OwnerReference.from_dict(r) for r in refs or ()),
            deleting=m.get("deletionTimestamp") is not None,
        )


def _device_meta(obj: object) -> tuple[str, str, str]:
    """Name, uid and nodename label: all a device view needs from metadata (cheaper than Meta.from_dict)."""
    m = as_mapping(as_mapping(obj, "object").get("metadata"), "metadata")
    name = m.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject("metadata.name must be a non-empty string")
    labels = as_mapping(m.get("labels"), "metadata.labels")
    return name, _s(m, "uid", "metadata.uid"), _s(labels, names.LABEL_NODENAME, "metadata.labels.nodename")


@dataclass(frozen=True, slots=True)
class PCIDevice:
    name: str
    packed_uid: int | str  # the uid as an int when it is a UUID (44 bytes instead of 85; 100,000 in the view)
    label_node: str
    node_name: str
    address: str
    vendor_id: str
    device_id: str
    class_id: str
    iommu_group: str
    # iommuGroupMembers kept as plain tuples of strings, which the garbage collector stops tracking (GroupMember
    # objects would add 200,000 tracked objects per 100,000 devices to every full collection)
    group_addresses: tuple[str, ...]
    bridge_addresses: tuple[str, ...]
    resource_name: str
    host_critical: bool
    host_critical_reasons: tuple[str, ...]
    absent: bool
    observe_only: bool = False  # status.observeOnly: the node's agent runs in observe mode and binds nothing
    pooled_resource_name: str = ""  # status.pooledResourceName: the shared name pci.ids gives the device's model

    @property
    def uid(self) -> str:
        return str(uuid.UUID(int=self.packed_uid)) if isinstance(self.packed_uid, int) else self.packed_uid

    @property
    def iommu_group_members(self) -> tuple[GroupMember, ...]:
        bridges = self.bridge_addresses
        return tuple(GroupMember(a, a in bridges) for a in self.group_addresses)

    @property
    def is_usb_controller(self) -> bool:
        return self.class_id.startswith(USB_CONTROLLER_CLASS_PREFIX)

    @classmethod
    def from_dict(cls, obj: object) -> PCIDevice:
        name, uid, label_node = _device_meta(obj)
        st = _status(obj)
        members_raw = st.get("iommuGroupMembers")
        if members_raw is not None and not isinstance(members_raw, list):
            raise MalformedObject("status.iommuGroupMembers must be a list")
        addresses: list[str] = []
        bridges: list[str] = []
        for item in members_raw or ():
            mm = as_mapping(item, "status.iommuGroupMembers[]")
            address = _si(mm, "address", "status.iommuGroupMembers[].address")
            addresses.append(address)
            if _b(mm, "bridge", "status.iommuGroupMembers[].bridge"):
                bridges.append(address)
        return cls(
            name=name,
            packed_uid=_pack_uid(uid),
            label_node=sys.intern(label_node),
            node_name=_si(st, "nodeName", "status.nodeName"),
            address=_si(st, "address", "status.address"),
            vendor_id=_si(st, "vendorId", "status.vendorId"),
            device_id=_si(st, "deviceId", "status.deviceId"),
            class_id=_si(st, "classId", "status.classId"),
            iommu_group=_si(st, "iommuGroup", "status.iommuGroup"),
            group_addresses=_shared(tuple(addresses)),
            bridge_addresses=_shared(tuple(bridges)),
            resource_name=_s(st, "resourceName", "status.resourceName"),
            host_critical=_b(st, "hostCritical", "status.hostCritical"),
            host_critical_reasons=_str_tuple(st.get("hostCriticalReasons"), "status.hostCriticalReasons"),
            absent=_b(st, "absent", "status.absent"),
            observe_only=_b(st, "observeOnly", "status.observeOnly"),
            pooled_resource_name=_si(st, "pooledResourceName", "status.pooledResourceName"),
        )


@dataclass(frozen=True, slots=True)
class USBDevice:
    name: str
    uid: str
    label_node: str
    node_name: str
    vendor_id: str
    product_id: str
    bus_num: int | None
    dev_num: int | None
    device_path: str
    pci_address: str  # the host controller's PCI address
    resource_name: str
    enabled: bool
    absent: bool  # status.absent, or upstream's status.status == "orphaned"
    observe_only: bool = False  # status.observeOnly: the node's agent runs in observe mode and offers nothing

    @classmethod
    def from_dict(cls, obj: object) -> USBDevice:
        name, uid, label_node = _device_meta(obj)
        st = _status(obj)
        return cls(
            name=name,
            uid=uid,
            label_node=sys.intern(label_node),
            node_name=_si(st, "nodeName", "status.nodeName"),
            vendor_id=_si(st, "vendorID", "status.vendorID"),
            product_id=_si(st, "productID", "status.productID"),
            bus_num=_i(st, "busNum", "status.busNum"),
            dev_num=_i(st, "devNum", "status.devNum"),
            device_path=_s(st, "devicePath", "status.devicePath"),
            pci_address=_si(st, "pciAddress", "status.pciAddress"),
            resource_name=_s(st, "resourceName", "status.resourceName"),
            enabled=_b(st, "enabled", "status.enabled"),
            absent=_b(st, "absent", "status.absent") or st.get("status") == "orphaned",
            observe_only=_b(st, "observeOnly", "status.observeOnly"),
        )


@dataclass(frozen=True, slots=True)
class PCIDeviceClaim:
    name: str
    uid: str
    owner: str  # the requested-by annotation, "" when absent
    address: str
    node_name: str
    user_name: str
    finalizers: tuple[str, ...]
    owner_references: tuple[OwnerReference, ...]
    allocated_to: tuple[str, ...] = ()  # status.allocatedTo pods ("<ns>/<name>"): the kubelet handed the device out
    disable_resource_pooling: bool = False
    offer: str = ""  # spec.offer: "DRA" offers the device through Dynamic Resource Allocation only (policy.dra)

    @classmethod
    def from_dict(cls, obj: object) -> PCIDeviceClaim:
        meta = Meta.from_dict(obj)
        sp = _spec(obj)
        return cls(
            name=meta.name,
            uid=meta.uid,
            owner=meta.annotations.get(names.ANNOTATION_REQUESTED_BY, ""),
            address=_s(sp, "address", "spec.address"),
            node_name=_s(sp, "nodeName", "spec.nodeName"),
            user_name=_s(sp, "userName", "spec.userName"),
            finalizers=meta.finalizers,
            owner_references=meta.owner_references,
            allocated_to=_allocated_to(obj),
            disable_resource_pooling=_b(sp, "disableResourcePooling", "spec.disableResourcePooling"),
            offer=_s(sp, "offer", "spec.offer"),
        )


@dataclass(frozen=True, slots=True)
class USBDeviceClaim:
    name: str
    uid: str
    owner: str
    user_name: str
    node_name: str  # spec.nodeName (UI) or status.nodeName; "" when neither
    pci_address: str  # spec.pciAddress (UI) or status.pciAddress; "" when neither
    finalizers: tuple[str, ...]
    owner_references: tuple[OwnerReference, ...]
    allocated_to: tuple[str, ...] = ()
    offer: str = ""

    @classmethod
    def from_dict(cls, obj: object) -> USBDeviceClaim:
        meta = Meta.from_dict(obj)
        sp = _spec(obj)
        st = _status(obj)
        return cls(
            name=meta.name,
            uid=meta.uid,
            owner=meta.annotations.get(names.ANNOTATION_REQUESTED_BY, ""),
            user_name=_s(sp, "userName", "spec.userName"),
            node_name=_s(sp, "nodeName", "spec.nodeName") or _s(st, "nodeName", "status.nodeName"),
            pci_address=_s(sp, "pciAddress", "spec.pciAddress") or _s(st, "pciAddress", "status.pciAddress"),
            finalizers=meta.finalizers,
            owner_references=meta.owner_references,
            allocated_to=_allocated_to(obj),
            offer=_s(sp, "offer", "spec.offer"),
        )


Claim = PCIDeviceClaim | USBDeviceClaim
Device = PCIDevice | USBDevice


def _allocated_to(obj: object) -> tuple[str, ...]:
    """The pods of status.allocatedTo (entries without a usable pod count as "(unknown pod)": still in use)."""
    raw = _status(obj).get("allocatedTo")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MalformedObject("status.allocatedTo must be a list")
    out = []
    for item in raw:
        pod = item.get("pod") if isinstance(item, Mapping) else None
        out.append(pod if isinstance(pod, str) and pod else "(unknown pod)")
    return tuple(out)


def as_mapping(value: object, where: str) -> Mapping[str, Any]:
    """value as an object (None: empty); MalformedObject when it is something else."""
    if type(value) is dict:  # the common case, without the slower ABC check
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{where} must be an object")
    return value


def _status(obj: object) -> Mapping[str, Any]:
    return as_mapping(as_mapping(obj, "object").get("status"), "status")


def _spec(obj: object) -> Mapping[str, Any]:
    return as_mapping(as_mapping(obj, "object").get("spec"), "spec")


def _s(m: Mapping[str, Any], key: str, where: str) -> str:
    value = m.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedObject(f"{where} must be a string")
    return value


def _pack_uid(uid: str) -> int | str:
    try:
        packed = uuid.UUID(uid)
    except ValueError:
        return uid
    return packed.int if str(packed) == uid else uid


@functools.lru_cache(maxsize=4096)
def _shared(members: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple for equal member lists: the same slots hold the same devices on every node of a model, and 100,000
    copies of the same two addresses would cost ~5 MiB of the webhook's view."""
    return members


def _si(m: Mapping[str, Any], key: str, where: str) -> str:
    """_s for values many objects share (node names, ids, groups): interned, so 100,000 views hold one copy."""
    return sys.intern(_s(m, key, where))


def _b(m: Mapping[str, Any], key: str, where: str) -> bool:
    value = m.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedObject(f"{where} must be a boolean")
    return value


def _i(m: Mapping[str, Any], key: str, where: str) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedObject(f"{where} must be an integer")
    return value


def _str_map(value: object, where: str) -> Mapping[str, str]:
    m = as_mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise MalformedObject(f"{where} must map strings to strings")
    return m


def _str_tuple(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise MalformedObject(f"{where} must be a list of strings")
    return tuple(value)
