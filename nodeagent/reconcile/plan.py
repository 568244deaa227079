"""PURE decisions of the agent: (what the host shows, what the API holds) -> the writes still missing.

Nothing here reads a file, calls the API or looks at a clock (times come in as arguments). Every function returns
only what differs, so a node whose objects already match the host plans nothing: an idle agent makes no writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal

from policy import names
from policy.objects import FINALIZER_AGENT

Obj = dict[str, Any]
ResourceNameMode = Literal["perDevice", "pooled"]

FINALIZER = FINALIZER_AGENT
VFIO_DRIVER = "vfio-pci"
HOST_DEVICES_GATE = "HostDevices"

# Status keys the device reconcilers own; anything else in status (conditions, fields of newer versions) is kept.
PCI_STATUS_KEYS = frozenset(
    {
        "address", "vendorId", "deviceId", "classId", "iommuGroup", "nodeName", "resourceName", "description",
        "kernelDriverInUse", "subsystemVendorId", "subsystemDeviceId", "revision", "numaNode", "resetMethods",
        "iommuGroupMembers", "hostCritical", "hostCriticalReasons", "hostWarnings", "absent", "observeOnly",
    }
)  # fmt: skip
USB_STATUS_KEYS = frozenset(
    {
        "vendorID", "productID", "nodeName", "resourceName", "devicePath", "description", "pciAddress", "classType",
        "enabled", "busNum", "devNum", "portPath", "serial", "absent", "status", "message", "observeOnly",
    }
)  # fmt: skip
ORPHANED = "orphaned"


# -- device objects -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """Create the object (metadata and spec), then write its status."""

    obj: Obj


@dataclass(frozen=True)
class Patch:
    """Merge patches for metadata (main resource) and status (status subresource); None when nothing changes."""

    name: str
    metadata: Obj | None = None
    status: Obj | None = None
    driver_changed: tuple[str, str] | None = None
    became_absent: bool = False


@dataclass(frozen=True)
class Delete:
    name: str


DeviceAction = Create | Patch | Delete


def node_owner_reference(node: str, node_uid: str) -> Obj:
    """The ownerReference to the core Node: device objects go with their node (never blocking its deletion)."""
    return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}


def diff_status(current: Mapping[str, Any], desired: Mapping[str, Any], owned: Set[str]) -> Obj:
    """Merge patch from current to desired over the owned keys: changed values, and None for owned keys to drop."""
    patch: Obj = {}
    for key, value in desired.items():
        if current.get(key) != value:
            patch[key] = value
    for key in owned:
        if key in current and key not in desired:
            patch[key] = None
    return patch


def metadata_patch(current: Mapping[str, Any], node: str, owner: Obj | None) -> Obj | None:
    meta = current.get("metadata") or {}
    patch: Obj = {}
    if (meta.get("labels") or {}).get(names.LABEL_NODENAME) != node:
        patch["labels"] = {names.LABEL_NODENAME: node}  # a merge patch: other labels are kept
    if owner is not None:
        refs = list(meta.get("ownerReferences") or [])
        if not any(r.get("kind") == "Node" and r.get("uid") == owner["uid"] for r in refs):
            refs = [r for r in refs if r.get("kind") != "Node"] + [owner]
            patch["ownerReferences"] = refs
            patch["resourceVersion"] = meta.get("resourceVersion")  # a list is replaced whole: only over what we read
    return patch or None


def plan_devices(
    desired: Mapping[str, Obj],
    existing: Mapping[str, Obj],
    claimed: Set[str],
    *,
    node: str,
    owner: Obj | None,
    owned_keys: Set[str],
    usb: bool = False,
    now: str = "",
) -> list[DeviceAction]:
    """Device objects of one kind on one node: create the new, patch the changed, delete the gone.

    A device that is gone but still claimed is kept and marked `absent` (USB also `status: orphaned`, as upstream),
    so garbage collection never takes the user's claim with it. Condition `Present` says which, since when.
    """
    actions: list[DeviceAction] = []
    for name in sorted(desired):
        want = desired[name]
        have = existing.get(name)
        if have is None:
            obj = dict(want)
            obj["status"] = dict(want.get("status") or {}, conditions=set_conditions([], [PRESENT], now))
            if owner is not None:
                obj["metadata"] = dict(want["metadata"], ownerReferences=[owner])
            actions.append(Create(obj))
            continue
        have_st = have.get("status") or {}
        want_st = dict(want.get("status") or {})
        want_st["conditions"] = set_conditions(have_st.get("conditions") or [], [PRESENT], now)
        status = diff_status(have_st, want_st, owned_keys)
        meta = metadata_patch(have, node, owner)
        drv = None
        if "kernelDriverInUse" in status:
            drv = (str((have.get("status") or {}).get("kernelDriverInUse", "")), str(status["kernelDriverInUse"]))
        if status or meta:
            actions.append(Patch(name, meta, status or None, driver_changed=drv))
    for name in sorted(existing):
        if name in desired:
            continue
        if name not in claimed:
            actions.append(Delete(name))
            continue
        st = existing[name].get("status") or {}
        patch: Obj = {}
        if st.get("absent") is not True:
            patch["absent"] = True
        if usb and st.get("status") != ORPHANED:
            patch["status"] = ORPHANED
            patch["message"] = "device disconnected while claimed"
        conditions = set_conditions(st.get("conditions") or [], [VANISHED], now)
        if conditions != (st.get("conditions") or []):
            patch["conditions"] = conditions
        if patch:
            actions.append(Patch(name, None, patch, became_absent=st.get("absent") is not True))
    return actions


def effective_resource_name(
    pooled: str,
    device_name: str,
    *,
    mode: ResourceNameMode,
    disable_pooling: bool = False,
    adopted: bool = False,
) -> str:
    """The name a claimed PCI device is offered under (DESIGN §3 "Resource names").

    Per device (`<vendor part>/<PCIDevice name>`, shortened to a DNS label) by default; the pooled name when the
    cluster asks for pooling and the claim does not opt out, and always for claims adopted from upstream (their VMs
    already use that name).
    """
    if adopted or (mode == "pooled" and not disable_pooling):
        return pooled
    vendor = pooled.split("/", 1)[0] if "/" in pooled else names.UNKNOWN_VENDOR_PART
    return f"{vendor}/{names.shorten_name_part(device_name)}"


# -- conditions and claim status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


PRESENT = Condition("Present", True, "Discovered", "the device is present on the node")
VANISHED = Condition("Present", False, "Vanished", "the device disappeared while claimed; kept for its claim")


def set_conditions(current: Sequence[Mapping[str, Any]], wanted: Iterable[Condition], now: str) -> list[Obj]:
    """Conditions with `wanted` applied; lastTransitionTime moves only when a condition's status changes."""
    out = [dict(c) for c in current]
    for w in wanted:
        status = "True" if w.status else "False"
        for c in out:
            if c.get("type") == w.type:
                if c.get("status") != status:
                    c["lastTransitionTime"] = now
                c.update(status=status, reason=w.reason, message=w.message)
                break
        else:
            out.append(
                {"type": w.type, "status": status, "reason": w.reason, "message": w.message, "lastTransitionTime": now}
            )
    return out


def drop_conditions(current: Sequence[Mapping[str, Any]], types: Set[str]) -> list[Obj]:
    return [dict(c) for c in current if c.get("type") not in types]


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or ():
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def finalizers_with(meta: Mapping[str, Any], present: bool) -> list[str] | None:
    """The finalizer list with ours added (present) or removed; None when it already is so."""
    fins = list(meta.get("finalizers") or [])
    if present == (FINALIZER in fins):
        return None
    return [*fins, FINALIZER] if present else [f for f in fins if f != FINALIZER]


# -- re-checking admission on the node (A3-A5) --------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPeer:
    """What the node knows about one member of a claimed device's IOMMU group."""

    address: str
    bridge: bool
    known: bool  # a PCIDevice object of this node describes it
    host_critical: tuple[str, ...] = ()
    claim_owner: str | None = None  # owner of the live claim on it, None when unclaimed
    usb_claimed: bool = False  # a USB controller with claimed USB devices behind it


def recheck_group(address: str, owner: str, peers: Iterable[GroupPeer]) -> str | None:
    """Why the device must not be bound now (A3-A5 as the node sees them), or None when it may be."""
    for p in sorted(peers, key=lambda p: p.address):
        what = "the device" if p.address == address else f"IOMMU group member {p.address}"
        if p.host_critical:
            return f"{what} is host-critical: {'; '.join(p.host_critical)}"
        if p.usb_claimed:
            return f"{what} is a USB controller with claimed USB devices behind it"
        if p.bridge:
            continue
        if not p.known:
            return f"{what} is not a known PCI device of this node"
        if p.claim_owner is not None and p.claim_owner != owner:
            return f"{what} is claimed by another owner ({p.claim_owner or 'unknown'})"
    return None


# -- KubeVirt permits ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class PciPermit:
    resource_name: str
    selector: str  # "vvvv:dddd"

    def entry(self) -> Obj:
        return {
            "pciVendorSelector": self.selector,
            "resourceName": self.resource_name,
            "externalResourceProvider": True,
        }


@dataclass(frozen=True, order=True)
class UsbPermit:
    resource_name: str
    vendor: str
    product: str

    def entry(self) -> Obj:
        return {
            "resourceName": self.resource_name,
            "selectors": [{"vendor": self.vendor, "product": self.product}],
            "externalResourceProvider": True,
        }


@dataclass(frozen=True)
class PermitPlan:
    """The new `permittedHostDevices` lists (None: leave that list alone) and what changed, for the log."""

    pci: list[Obj] | None
    usb: list[Obj] | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    candidates: frozenset[str] = field(default_factory=frozenset)


def host_devices_gate(kubevirt: Mapping[str, Any]) -> bool:
    spec = kubevirt.get("spec") or {}
    gates = ((spec.get("configuration") or {}).get("developerConfiguration") or {}).get("featureGates") or []
    return HOST_DEVICES_GATE in gates


def permitted(kubevirt: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((kubevirt.get("spec") or {}).get("configuration") or {}).get("permittedHostDevices") or {}


def removal_candidates(kubevirt: Mapping[str, Any], wanted: Set[str], ours: Set[str]) -> frozenset[str]:
    """Names in the CR this node could have added (`ours`) but no longer wants: remove if no claim needs them."""
    p = permitted(kubevirt)
    present = {str(e.get("resourceName")) for e in [*(p.get("pciHostDevices") or []), *(p.get("usb") or [])]}
    return frozenset(n for n in present if n in ours and n not in wanted)


def plan_permits(
    kubevirt: Mapping[str, Any],
    pci: Set[PciPermit],
    usb: Set[UsbPermit],
    *,
    ours: Set[str],
    needed: Set[str],
) -> PermitPlan:
    """Set semantics: add this node's wanted entries, remove entries of `ours` that no claim in the cluster `needed`;
    entries of other providers (names not in `ours`) are never touched."""
    p = permitted(kubevirt)
    wanted_names = {x.resource_name for x in pci} | {x.resource_name for x in usb}
    removable = {n for n in ours if n not in wanted_names and n not in needed}

    def merge(current: list[Obj], want: list[Obj], key: str) -> tuple[list[Obj], list[str], list[str]]:
        have_names = {str(e.get("resourceName")) for e in current}
        kept = [e for e in current if str(e.get("resourceName")) not in removable]
        removed = sorted({str(e.get("resourceName")) for e in current} - {str(e.get("resourceName")) for e in kept})
        added = []
        for e in want:
            if e["resourceName"] not in have_names:
                kept.append(e)
                added.append(e["resourceName"])
        return kept, added, removed

    cur_pci = list(p.get("pciHostDevices") or [])
    cur_usb = list(p.get("usb") or [])
    new_pci, add_p, rem_p = merge(cur_pci, [x.entry() for x in sorted(pci)], "pci")
    new_usb, add_u, rem_u = merge(cur_usb, [x.entry() for x in sorted(usb)], "usb")
    return PermitPlan(
        pci=new_pci if (add_p or rem_p) else None,
        usb=new_usb if (add_u or rem_u) else None,
        added=tuple(add_p + add_u),
        removed=tuple(rem_p + rem_u),
    )
