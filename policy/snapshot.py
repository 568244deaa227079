"""The read-only cluster view the rules use, and the indexed store the webhook feeds from its watches.

Every question a rule asks is answered from an index (a dict lookup), never a scan: the webhook holds 100,000
devices and must answer in milliseconds. Writers (watch events) take a lock and update all indexes of one event
together; readers take the same lock per lookup, so no lookup ever sees a half-applied event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from policy import copies, dra, hostdevices, names
from policy.copies import Clone, Restore, Snapshot
from policy.hostdevices import Workload
from policy.objects import (
    Claim,
    Device,
    MalformedObject,
    PCIDevice,
    PCIDeviceClaim,
    USBDevice,
    USBDeviceClaim,
)

K = TypeVar("K")

DRA_KINDS = ("DeviceClass", "ResourceClaimTemplate")  # what DRA claims are judged against (policy.dra)
KINDS = (
    "PCIDevice",
    "PCIDeviceClaim",
    "USBDevice",
    "USBDeviceClaim",
    "Node",
    *hostdevices.WORKLOAD_KINDS,
    *copies.KINDS,
    *DRA_KINDS,
)
# kinds whose objects hold devices while they run: indexed by the resource names they ask for (A7, A9)
_HOLDERS = (hostdevices.VM, hostdevices.VMI)
# kinds whose devices a holder gets by reference (spec.instancetype)
_INSTANCETYPES = (hostdevices.INSTANCETYPE, hostdevices.CLUSTER_INSTANCETYPE)


class ClusterView(Protocol):
    def pcidevice(self, name: str) -> PCIDevice | None: ...
    def usbdevice(self, name: str) -> USBDevice | None: ...
    def pcideviceclaim(self, name: str) -> PCIDeviceClaim | None: ...
    def usbdeviceclaim(self, name: str) -> USBDeviceClaim | None: ...
    def pcidevice_by_address(self, node: str, address: str) -> PCIDevice | None: ...
    def pcidevices_in_group(self, node: str, group: str) -> Sequence[PCIDevice]: ...
    def usbdevices_behind_controller(self, node: str, pci_address: str) -> Sequence[USBDevice]: ...
    def devices_with_resource(self, resource_name: str) -> Sequence[Device]:
        """PCI and USB devices whose status.resourceName is resource_name."""
        ...

    def claimed_devices_with_resource(self, resource_name: str) -> Sequence[Device]:
        """Those of devices_with_resource(resource_name) that have a claim."""
        ...

    def claims_of_owner(self, owner: str) -> Sequence[Claim]: ...
    def node_exists(self, name: str) -> bool: ...
    def workload(self, kind: str, namespace: str, name: str) -> Workload | None:
        """A VM, VMI, pool, replica set or instancetype (namespace "" for cluster instancetypes)."""
        ...

    def workloads_naming(self, resource_name: str) -> Sequence[Workload]:
        """VMs and VMIs that ask for resource_name: in hostDevices, gpus or resources, or through their instancetype."""
        ...

    def devices_for_part(self, part: str) -> Sequence[Device]:
        """Devices whose per-device resource name ends in `part` (the object name, or its shortened form)."""
        ...

    def pooled_models(self, resource_name: str) -> Sequence[str]:
        """The `vendor:device` models of known PCI devices whose pooled name is resource_name."""
        ...

    def node_for_part(self, part: str) -> str:
        """The known node (a Node object, or the node of a device object) that a per-device name part belongs to."""
        ...

    def copy(self, kind: str, namespace: str, name: str) -> Restore | Clone | Snapshot | None:
        """A VirtualMachineRestore, VirtualMachineClone or VirtualMachineSnapshot."""
        ...

    def restore_by_mark(self, namespace: str, mark: str) -> Restore | None:
        """The restore whose `<name>-<uid>` KubeVirt wrote into a VM's lastRestoreUID annotation."""
        ...

    def pcidevices_of_model(self, node: str, vendor_id: str, device_id: str) -> Sequence[PCIDevice]:
        """PCI devices of one vendor:device on a node (one pool when resource names are pooled)."""
        ...

    def pcidevices_at_address(self, address: str) -> Sequence[PCIDevice]:
        """PCI devices with this address, on every node (a DRA selector may pin an address without a node)."""
        ...

    def device_class(self, name: str) -> dra.DeviceClass | None: ...
    def claim_templates(self, namespace: str) -> Sequence[dra.ClaimTemplate]:
        """The ResourceClaimTemplates of a namespace (the claims the resource claim controller makes come from one)."""
        ...


class ClusterIndex:
    """A mutable, internally locked ClusterView holding slim views, fed by upsert/delete/replace."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pci: dict[str, PCIDevice] = {}
        self._usb: dict[str, USBDevice] = {}
        self._pci_claims: dict[str, PCIDeviceClaim] = {}
        self._usb_claims: dict[str, USBDeviceClaim] = {}
        self._nodes: set[str] = set()
        # a device object is named `<node>-<address digits>` (A10 keeps agents to it), so lookups by address compute
        # the name; only objects named otherwise (none an agent writes) are kept here
        self._pci_odd_names: dict[tuple[str, str], str] = {}
        self._pci_by_group: MultiMap[tuple[str, str]] = MultiMap()
        self._usb_by_controller: MultiMap[tuple[str, str]] = MultiMap()
        # resourceName -> device names, all and claimed only, per device kind
        self._by_resource: dict[str, MultiMap[str]] = {"PCIDevice": MultiMap(), "USBDevice": MultiMap()}
        self._claimed_by_resource: dict[str, MultiMap[str]] = {"PCIDevice": MultiMap(), "USBDevice": MultiMap()}
        self._claims_by_owner: dict[str, MultiMap[str]] = {"PCIDeviceClaim": MultiMap(), "USBDeviceClaim": MultiMap()}
        self._pci_by_model: MultiMap[tuple[str, str, str]] = MultiMap()
        # kind -> "<namespace>/<name>" -> view; resource name -> "<kind>|<key>" of VMs and VMIs naming it
        self._workloads: dict[str, dict[str, Workload]] = {k: {} for k in hostdevices.WORKLOAD_KINDS}
        self._naming: MultiMap[str] = MultiMap()
        # "<kind>|<key>" of an instancetype -> "<kind>|<key>" of the VMs and VMIs that reference it
        self._referencing: MultiMap[str] = MultiMap()
        # our names before a device is offered under them (issue 21): nodes known through their devices, long device
        # names by their shortened per-device part, pooled names by model
        self._device_nodes: dict[str, int] = {}
        self._short_parts: dict[str, str] = {}
        self._pooled: dict[tuple[str, str], int] = {}  # (pooled name, "vendor:device") -> devices
        self._pooled_models: MultiMap[str] = MultiMap()
        self._copies: dict[str, dict[str, Any]] = {k: {} for k in copies.KINDS}
        self._restore_marks: dict[tuple[str, str], str] = {}
        # DRA (policy.dra): DeviceClasses by name, ResourceClaimTemplates by "<namespace>/<name>" and by namespace
        self._dra: dict[str, dict[str, Any]] = {k: {} for k in DRA_KINDS}
        self._templates_by_namespace: MultiMap[str] = MultiMap()

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> ClusterIndex:
        """Build an index from whole objects (tests); each object's `kind` says where it goes."""
        index = cls()
        for obj in objects:
            kind = obj.get("kind")
            if not isinstance(kind, str) or kind not in KINDS:
                raise ValueError(f"unsupported kind {kind!r}")
            if not index.upsert(kind, obj):
                raise MalformedObject(f"{kind} object is malformed")
        return index

    # -- writers ------------------------------------------------------------------------------------------------

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Add or replace one object; return False (and forget any old version) when it is malformed.

        Parsing happens outside the lock; only the index update holds it.
        """
        if kind == "Node":
            name = _name_of(obj)
            if not name:
                return False
            with self._lock:
                self._nodes.add(name)
            return True
        view = self._parse(kind, obj)
        with self._lock:
            if view is None:
                name = _key_of(kind, obj)
                if name:
                    self._remove(kind, name)
                return False
            self._remove(kind, _key(view))
            self._add(kind, view)
            return True

    def delete(self, kind: str, name: str) -> None:
        with self._lock:
            if kind == "Node":
                self._nodes.discard(name)
            elif kind == "DeviceClass":
                self._remove(kind, name.rpartition("/")[2])  # cluster-scoped: the webhook's watch keys it "/<name>"
            elif kind in _PARSERS:
                self._remove(kind, name)  # workloads: name is "<namespace>/<name>"
            else:
                raise ValueError(f"unsupported kind {kind!r}")

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]], *, batch: int = 500) -> int:
        """Make the objects of one kind exactly `objects` (a re-list); return how many were malformed and skipped.

        Admissions keep being answered during a re-list of 100,000 objects: parsing happens outside the lock, and
        only the objects that differ are applied, `batch` at a time, each one atomically (as a watch event would).
        """
        if kind == "Node":
            names = {n for n in map(_name_of, objects) if n}
            with self._lock:
                self._nodes = names
            return 0
        wanted: dict[str, Any] = {}
        malformed = 0
        for obj in objects:
            view = self._parse(kind, obj)
            if view is None:
                malformed += 1
            else:
                wanted[_key(view)] = view
        store = self._store(kind)
        with self._lock:
            stale = [name for name in store if name not in wanted]
        changed = [view for name, view in wanted.items() if store.get(name) != view]
        for start in range(0, max(len(stale), len(changed)), batch):
            with self._lock:
                for name in stale[start : start + batch]:
                    if name not in wanted:
                        self._remove(kind, name)
                for view in changed[start : start + batch]:
                    self._remove(kind, _key(view))
                    self._add(kind, view)
        return malformed

    def _parse(self, kind: str, obj: Mapping[str, Any]) -> Any:
        parser = _PARSERS.get(kind)
        if parser is None:
            raise ValueError(f"unsupported kind {kind!r}")
        try:
            return parser(obj)
        except MalformedObject:
            return None

    # -- readers ------------------------------------------------------------------------------------------------

    def pcidevice(self, name: str) -> PCIDevice | None:
        with self._lock:
            return self._pci.get(name)

    def usbdevice(self, name: str) -> USBDevice | None:
        with self._lock:
            return self._usb.get(name)

    def pcideviceclaim(self, name: str) -> PCIDeviceClaim | None:
        with self._lock:
            return self._pci_claims.get(name)

    def usbdeviceclaim(self, name: str) -> USBDeviceClaim | None:
        with self._lock:
            return self._usb_claims.get(name)

    def pcidevice_by_address(self, node: str, address: str) -> PCIDevice | None:
        with self._lock:
            return self._at(node, address)

    def pcidevices_in_group(self, node: str, group: str) -> Sequence[PCIDevice]:
        with self._lock:
            return [self._pci[n] for n in self._pci_by_group.get((node, group))]

    def usbdevices_behind_controller(self, node: str, pci_address: str) -> Sequence[USBDevice]:
        with self._lock:
            return [self._usb[n] for n in self._usb_by_controller.get((node, pci_address))]

    def devices_with_resource(self, resource_name: str) -> Sequence[Device]:
        with self._lock:
            return self._devices(self._by_resource, resource_name)

    def claimed_devices_with_resource(self, resource_name: str) -> Sequence[Device]:
        with self._lock:
            return self._devices(self._claimed_by_resource, resource_name)

    def claims_of_owner(self, owner: str) -> Sequence[Claim]:
        with self._lock:
            out: list[Claim] = [self._pci_claims[n] for n in self._claims_by_owner["PCIDeviceClaim"].get(owner)]
            out.extend(self._usb_claims[n] for n in self._claims_by_owner["USBDeviceClaim"].get(owner))
            return out

    def node_exists(self, name: str) -> bool:
        with self._lock:
            return name in self._nodes

    def workload(self, kind: str, namespace: str, name: str) -> Workload | None:
        with self._lock:
            store = self._workloads.get(kind)
            return store.get(f"{namespace}/{name}") if store is not None else None

    def workloads_naming(self, resource_name: str) -> Sequence[Workload]:
        with self._lock:
            refs: list[str] = []
            for ref in self._naming.get(resource_name):
                if ref.partition("|")[0] in _INSTANCETYPES:
                    refs.extend(self._referencing.get(ref))
                else:
                    refs.append(ref)
            out = []
            for ref in sorted(set(refs)):
                kind, _, key = ref.partition("|")
                w = self._workloads[kind].get(key)
                if w is not None:
                    out.append(w)
            return out

    def devices_for_part(self, part: str) -> Sequence[Device]:
        with self._lock:
            name = self._short_parts.get(part, part)
            found: list[Device] = []
            pci, usb = self._pci.get(name), self._usb.get(name)
            if pci is not None:
                found.append(pci)
            if usb is not None:
                found.append(usb)
            return found

    def pooled_models(self, resource_name: str) -> Sequence[str]:
        with self._lock:
            return self._pooled_models.get(resource_name)

    def node_for_part(self, part: str) -> str:
        candidates = names.per_device_node_candidates(part)
        if not candidates:
            return ""
        with self._lock:
            for c in candidates:
                if c in self._nodes or c in self._device_nodes:
                    return c
            if len(part) == names.NAME_PART_LIMIT:  # shortened: the head may be a long node name cut short
                head = candidates[0]
                for node in (*self._nodes, *self._device_nodes):
                    if len(node) >= len(head) and names.shortened_node_prefix(node) == head:
                        return node
        return ""

    def copy(self, kind: str, namespace: str, name: str) -> Restore | Clone | Snapshot | None:
        with self._lock:
            store = self._copies.get(kind)
            view: Restore | Clone | Snapshot | None = store.get(f"{namespace}/{name}") if store is not None else None
            return view

    def restore_by_mark(self, namespace: str, mark: str) -> Restore | None:
        with self._lock:
            key = self._restore_marks.get((namespace, mark))
            view = self._copies[copies.RESTORE].get(key) if key is not None else None
            return view if isinstance(view, Restore) else None

    def pcidevices_of_model(self, node: str, vendor_id: str, device_id: str) -> Sequence[PCIDevice]:
        with self._lock:
            return [self._pci[n] for n in self._pci_by_model.get((node, vendor_id, device_id))]

    def pcidevices_at_address(self, address: str) -> Sequence[PCIDevice]:
        """By computing each known node's device name (rare: a DRA claim that pins an address but no node)."""
        with self._lock:
            found = (self._at(n, address) for n in sorted({*self._nodes, *self._device_nodes}))
            return [d for d in found if d is not None]

    def _at(self, node: str, address: str) -> PCIDevice | None:
        name = self._pci_odd_names.get((node, address))
        if name is None:
            if not names.is_pci_address(address):
                return None
            name = names.pcidevice_name(node, address)
        device = self._pci.get(name)
        return device if device is not None and (device.node_name, device.address) == (node, address) else None

    def device_class(self, name: str) -> dra.DeviceClass | None:
        with self._lock:
            view: dra.DeviceClass | None = self._dra["DeviceClass"].get(name)
            return view

    def claim_templates(self, namespace: str) -> Sequence[dra.ClaimTemplate]:
        with self._lock:
            store = self._dra["ResourceClaimTemplate"]
            return [store[k] for k in self._templates_by_namespace.get(namespace) if k in store]

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            return {
                "PCIDevice": len(self._pci),
                "PCIDeviceClaim": len(self._pci_claims),
                "USBDevice": len(self._usb),
                "USBDeviceClaim": len(self._usb_claims),
                "Node": len(self._nodes),
                **{kind: len(store) for kind, store in self._workloads.items()},
                **{kind: len(store) for kind, store in self._copies.items()},
                **{kind: len(store) for kind, store in self._dra.items()},
            }

    # -- index maintenance (called with the lock held) ----------------------------------------------------------

    def _store(self, kind: str) -> dict[str, Any]:
        stores: dict[str, dict[str, Any]] = {
            "PCIDevice": self._pci,
            "USBDevice": self._usb,
            "PCIDeviceClaim": self._pci_claims,
            "USBDeviceClaim": self._usb_claims,
        }
        if kind in stores:
            return stores[kind]
        if kind in self._dra:
            return self._dra[kind]
        return self._copies[kind] if kind in self._copies else self._workloads[kind]

    def _devices(self, index: dict[str, MultiMap[str]], resource_name: str) -> list[Device]:
        out: list[Device] = [self._pci[n] for n in index["PCIDevice"].get(resource_name)]
        out.extend(self._usb[n] for n in index["USBDevice"].get(resource_name))
        return out

    def _is_claimed(self, device_kind: str, name: str) -> bool:
        """Claimed and offered under a resource name: a claim offered through DRA gives its device no name."""
        claim = (self._pci_claims if device_kind == "PCIDevice" else self._usb_claims).get(name)
        return claim is not None and claim.offer != dra.OFFER_DRA

    def _add(self, kind: str, view: Any) -> None:
        self._store(kind)[_key(view)] = view
        if isinstance(view, dra.ClaimTemplate):
            self._templates_by_namespace.add(view.namespace, view.key)
            return
        if isinstance(view, dra.DeviceClass):
            return
        if isinstance(view, Workload):
            if kind in _HOLDERS or kind in _INSTANCETYPES:
                for device_name in set(view.device_names):
                    self._naming.add(device_name, f"{kind}|{view.key}")
            if kind in _HOLDERS and view.instancetype is not None:
                self._referencing.add(_instancetype_ref(view), f"{kind}|{view.key}")
            return
        if isinstance(view, Restore):
            self._restore_marks[(view.namespace, view.mark)] = view.key
            return
        if isinstance(view, Clone | Snapshot):
            return
        self._count_node(view, +1)
        if isinstance(view, PCIDevice | USBDevice) and len(view.name) > names.NAME_PART_LIMIT:
            self._short_parts[names.shorten_name_part(view.name)] = view.name
        if isinstance(view, PCIDevice) and names.is_pooled_shape(view.pooled_resource_name):
            pk = (view.pooled_resource_name, f"{view.vendor_id}:{view.device_id}")
            self._pooled[pk] = self._pooled.get(pk, 0) + 1
            self._pooled_models.add(*pk)
        if isinstance(view, PCIDevice):
            if not _named_by_address(view):
                self._pci_odd_names[(view.node_name, view.address)] = view.name
            self._pci_by_model.add((view.node_name, view.vendor_id, view.device_id), view.name)
            if view.iommu_group:
                self._pci_by_group.add((view.node_name, view.iommu_group), view.name)
            if _carries(view):
                self._add_resource("PCIDevice", view.name, view.resource_name)
        elif isinstance(view, USBDevice):
            if view.pci_address:
                self._usb_by_controller.add((view.node_name, view.pci_address), view.name)
            if _carries(view):
                self._add_resource("USBDevice", view.name, view.resource_name)
        elif isinstance(view, PCIDeviceClaim | USBDeviceClaim):
            self._claims_by_owner[kind].add(view.owner, view.name)
            device_kind = "PCIDevice" if kind == "PCIDeviceClaim" else "USBDevice"
            device: Device | None = (self._pci if device_kind == "PCIDevice" else self._usb).get(view.name)
            if device is not None and device.resource_name and _carries(device) and view.offer != dra.OFFER_DRA:
                self._claimed_by_resource[device_kind].add(device.resource_name, view.name)

    def _add_resource(self, device_kind: str, name: str, resource_name: str) -> None:
        if not resource_name:
            return
        self._by_resource[device_kind].add(resource_name, name)
        if self._is_claimed(device_kind, name):
            self._claimed_by_resource[device_kind].add(resource_name, name)

    def _remove(self, kind: str, name: str) -> None:
        view = self._store(kind).pop(name, None)
        if view is None:
            return
        if isinstance(view, dra.ClaimTemplate):
            self._templates_by_namespace.discard(view.namespace, view.key)
            return
        if isinstance(view, dra.DeviceClass):
            return
        if isinstance(view, Workload):
            for device_name in set(view.device_names):
                self._naming.discard(device_name, f"{kind}|{view.key}")
            if view.instancetype is not None:
                self._referencing.discard(_instancetype_ref(view), f"{kind}|{view.key}")
            return
        if isinstance(view, Restore):
            if self._restore_marks.get((view.namespace, view.mark)) == view.key:
                del self._restore_marks[(view.namespace, view.mark)]
            return
        if isinstance(view, Clone | Snapshot):
            return
        self._count_node(view, -1)
        if isinstance(view, PCIDevice | USBDevice) and len(view.name) > names.NAME_PART_LIMIT:
            self._short_parts.pop(names.shorten_name_part(view.name), None)
        if isinstance(view, PCIDevice) and names.is_pooled_shape(view.pooled_resource_name):
            pk = (view.pooled_resource_name, f"{view.vendor_id}:{view.device_id}")
            left = self._pooled.get(pk, 0) - 1
            if left > 0:
                self._pooled[pk] = left
            else:
                self._pooled.pop(pk, None)
                self._pooled_models.discard(*pk)
        if isinstance(view, PCIDevice):
            if self._pci_odd_names.get((view.node_name, view.address)) == name:
                del self._pci_odd_names[(view.node_name, view.address)]
            self._pci_by_model.discard((view.node_name, view.vendor_id, view.device_id), name)
            self._pci_by_group.discard((view.node_name, view.iommu_group), name)
            self._by_resource["PCIDevice"].discard(view.resource_name, name)
            self._claimed_by_resource["PCIDevice"].discard(view.resource_name, name)
        elif isinstance(view, USBDevice):
            self._usb_by_controller.discard((view.node_name, view.pci_address), name)
            self._by_resource["USBDevice"].discard(view.resource_name, name)
            self._claimed_by_resource["USBDevice"].discard(view.resource_name, name)
        elif isinstance(view, PCIDeviceClaim | USBDeviceClaim):
            self._claims_by_owner[kind].discard(view.owner, name)
            device_kind = "PCIDevice" if kind == "PCIDeviceClaim" else "USBDevice"
            device: Device | None = (self._pci if device_kind == "PCIDevice" else self._usb).get(name)
            if device is not None:
                self._claimed_by_resource[device_kind].discard(device.resource_name, name)


    def _count_node(self, view: Any, delta: int) -> None:
        """Nodes known through their device objects (a device can be seen before its Node is)."""
        if not isinstance(view, PCIDevice | USBDevice) or not view.node_name:
            return
        left = self._device_nodes.get(view.node_name, 0) + delta
        if left > 0:
            self._device_nodes[view.node_name] = left
        else:
            self._device_nodes.pop(view.node_name, None)


def _named_by_address(device: PCIDevice) -> bool:
    return names.is_pci_address(device.address) and device.name == names.pcidevice_name(
        device.node_name, device.address
    )


def _carries(device: Device) -> bool:
    """A device is indexed under its resourceName only when it may carry it (names are node-bound: an agent that
    writes another node's per-device name makes its device offered under nothing)."""
    if isinstance(device, PCIDevice):
        return names.pci_may_carry(device.name, device.pooled_resource_name, device.resource_name)
    return names.usb_may_carry(device.name, device.resource_name)


def _instancetype_ref(w: Workload) -> str:
    """The `_naming` reference of the instancetype w points at (cluster instancetypes have no namespace)."""
    assert w.instancetype is not None
    kind, name = w.instancetype
    namespace = "" if kind == hostdevices.CLUSTER_INSTANCETYPE else w.namespace
    return f"{kind}|{namespace}/{name}"


class MultiMap(Generic[K]):
    """key -> names, storing a lone name as a plain str, a few as a sorted tuple and only many as a set (most
    groups, resources and owners have one or a handful of members: 100,000 one-element sets would cost ~20 MiB, and
    a set costs about four times a tuple per member). get() returns the names sorted."""

    __slots__ = ("_d",)
    _TUPLE_MAX = 32  # above this a set: adding to a tuple copies it

    def __init__(self) -> None:
        self._d: dict[K, str | tuple[str, ...] | set[str]] = {}

    def add(self, key: K, name: str) -> None:
        current = self._d.get(key)
        if current is None:
            self._d[key] = name
        elif isinstance(current, str):
            if current != name:
                self._d[key] = (current, name) if current < name else (name, current)
        elif isinstance(current, tuple):
            if name not in current:
                grown = (*current, name)
                self._d[key] = tuple(sorted(grown)) if len(grown) <= self._TUPLE_MAX else set(grown)
        else:
            current.add(name)

    def discard(self, key: K, name: str) -> None:
        current = self._d.get(key)
        if current is None:
            return
        if isinstance(current, str):
            if current == name:
                del self._d[key]
            return
        rest = [n for n in current if n != name] if isinstance(current, tuple) else None
        if rest is None:
            assert isinstance(current, set)
            current.discard(name)
            rest = list(current) if len(current) <= self._TUPLE_MAX else None
        if rest is not None:
            self._d[key] = rest[0] if len(rest) == 1 else tuple(sorted(rest))

    def get(self, key: K) -> list[str]:
        current = self._d.get(key)
        if current is None:
            return []
        if isinstance(current, str):
            return [current]
        if isinstance(current, tuple):
            return list(current)
        return sorted(current)


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def _key(view: Any) -> str:
    """The store key of a view: workloads, KubeVirt's copies and claim templates are namespaced, our kinds are not."""
    if isinstance(view, Workload | Restore | Clone | Snapshot | dra.ClaimTemplate | dra.DeviceClass):
        return str(view.key)
    return str(view.name)


def _key_of(kind: str, obj: Mapping[str, Any]) -> str:
    name = _name_of(obj)
    if kind == "DeviceClass":
        return name.rpartition("/")[2]
    namespaced = kind in hostdevices.DEVICE_PATHS or kind in copies.KINDS or kind == "ResourceClaimTemplate"
    if not namespaced or not name or "/" in name:
        return name
    meta = obj.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"{namespace if isinstance(namespace, str) else ''}/{name}"


_PARSERS: dict[str, Any] = {
    "PCIDevice": PCIDevice.from_dict,
    "USBDevice": USBDevice.from_dict,
    "PCIDeviceClaim": PCIDeviceClaim.from_dict,
    "USBDeviceClaim": USBDeviceClaim.from_dict,
    **{kind: Workload.from_dict for kind in hostdevices.WORKLOAD_KINDS},
    **{kind: (lambda obj, kind=kind: copies.parse(kind, obj)) for kind in copies.KINDS},
    "DeviceClass": dra.DeviceClass.from_dict,
    "ResourceClaimTemplate": dra.ClaimTemplate.from_dict,
}
