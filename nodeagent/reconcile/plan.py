"""PURE decisions of the agent: (what the host shows, what the API holds) -> the writes still missing.

Nothing here reads a file, calls the API or looks at a clock (times come in as arguments). Every function returns
only what differs, so a node whose objects already match the host plans nothing: an idle agent makes no writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal

from policy import hostdevices, names
from policy.objects import FINALIZER_AGENT, MalformedObject

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
        "pooledResourceName",
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
    return names.per_device_name_from(pooled, device_name)


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


def as_condition(c: Mapping[str, Any]) -> Condition:
    """A condition as the API holds it, to write back unchanged."""
    status = c.get("status") == "True"
    return Condition(str(c.get("type", "")), status, str(c.get("reason", "")), str(c.get("message", "")))


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


# -- the offering gate (issue 21): nothing may be waiting for a name when it is first offered ---------------------

OFFERED = "Offered"
OFFERED_REASON = "Offered"
FOREIGN_REQUESTS = "ForeignRequests"
REQUESTS_UNREADABLE = "RequestsUnreadable"
MAX_NAMED_OBJECTS = 5
OFFERED_MESSAGE = "offered as {resource}"
FOREIGN_REQUESTS_MESSAGE = (
    "{resource} is not offered yet: {objects} already {verb} for it and {pronoun} not allowed for the claim's owner "
    "{owner}; delete them or remove the device from them; the agent offers the device once none is left"
)
REQUESTS_UNREADABLE_MESSAGE = (
    "{resource} is not offered yet: the agent may not list {kinds}, so it cannot check that nothing else asks for "
    "it; grant the agent's ClusterRole read access (the chart's pcidevices-agent role does)"
)
USB_NOT_OFFERED = "NotOffered"
USB_NOT_OFFERED_MESSAGE = "the device is not offered yet; condition Offered says why"

POD = "pod"
_FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, order=True)
class Request:
    """One object that asks for (pods) or names (VM-like objects) an extended resource.

    `requester` is the username of the webhook's admission record (policy.records), which only the webhook can
    write; pods carry none (a pod's annotations are the user's), so a pod counts only as the virt-launcher pod of a
    VMI (`launcher_of`, the uid its controller ownerReference names)."""

    kind: str  # lower-case, as messages print kinds: pod, virtualmachine, ...
    namespace: str
    name: str
    requester: str | None = None
    launcher_of: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class RecordedVmi:
    """What judges a launcher pod: its VMI's namespace, the requester of its admission record, the names it asks for."""

    namespace: str
    requester: str
    names: frozenset[str]


@dataclass(frozen=True)
class ClusterRequests:
    """What the cluster asks for, read once by a pass that has a claim to gate: resource name -> requests, the VMIs
    that carry an admission record (by uid, to judge launcher pods), and the kinds the agent could not list."""

    by_name: Mapping[str, tuple[Request, ...]] = field(default_factory=dict)
    vmis: Mapping[str, RecordedVmi] = field(default_factory=dict)
    unreadable: tuple[str, ...] = ()


def build_requests(
    pods: Iterable[Mapping[str, Any]],
    workloads: Iterable[Mapping[str, Any]],
    instancetypes: Iterable[Mapping[str, Any]] = (),
    unreadable: Sequence[str] = (),
) -> ClusterRequests:
    """Index every request by name. Finished pods and objects being deleted ask for nothing any more (none of them
    can be handed a device later); `workloads` carry their `kind`, and a VM or pool that refers to an instancetype
    names that instancetype's devices too (KubeVirt copies them into the VMI)."""
    found: dict[str, set[Request]] = {}
    per_instancetype: dict[tuple[str, str], frozenset[str]] = {}
    for obj in instancetypes:
        try:
            it = hostdevices.Workload.from_dict(obj)
        except MalformedObject:
            continue
        per_instancetype[(it.kind, it.key)] = frozenset(it.device_names)
    vmis: dict[str, RecordedVmi] = {}
    for obj in workloads:
        try:
            w = hostdevices.Workload.from_dict(obj)
        except MalformedObject:
            continue  # the API server's schema keeps these out; a misshapen object names nothing we can read
        wanted = set(w.device_names)
        if w.instancetype is not None:
            kind, it_name = w.instancetype
            key = f"/{it_name}" if kind == hostdevices.CLUSTER_INSTANCETYPE else f"{w.namespace}/{it_name}"
            wanted |= per_instancetype.get((kind, key), frozenset())
        who = w.requester.username if w.requester is not None else None
        if w.kind == hostdevices.VMI and w.uid and who is not None:
            vmis[w.uid] = RecordedVmi(w.namespace, who, frozenset(wanted))
        if w.deleting:
            continue
        for resource in wanted:
            found.setdefault(resource, set()).add(Request(w.kind.lower(), w.namespace, w.name, who))
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in _FINISHED_PHASES:
            continue
        request = Request(POD, str(meta.get("namespace", "")), str(meta.get("name", "")), None, launcher_uid(pod))
        try:
            asked = set(hostdevices.pod_resources(pod))
        except MalformedObject:
            continue  # the API server never stores such a pod
        for resource in asked:
            found.setdefault(resource, set()).add(request)
    return ClusterRequests({k: tuple(sorted(v)) for k, v in sorted(found.items())}, vmis, tuple(sorted(unreadable)))


def launcher_uid(pod: Mapping[str, Any]) -> str:
    """The uid of the VirtualMachineInstance a pod's controller ownerReference names ("" for any other pod)."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if (
            isinstance(ref, Mapping)
            and ref.get("controller") is True
            and ref.get("kind") == hostdevices.VMI
            and str(ref.get("apiVersion", "")).startswith("kubevirt.io/")
        ):
            return str(ref.get("uid") or "")
    return ""


def foreign_requests(
    resource: str, requests: Iterable[Request], owner: str, vmis: Mapping[str, RecordedVmi]
) -> tuple[Request, ...]:
    """The requests for `resource` not allowed for `owner`: a VM-like object counts as the owner's when its
    admission record names the owner; a pod when it is the launcher pod of such a VMI in its own namespace that
    names the resource. Anything else (a plain pod, an object the webhook never judged, another requester's VM,
    a pod that only claims a VMI as its controller) is foreign."""
    out = []
    for r in requests:
        if r.kind == POD:
            vmi = vmis.get(r.launcher_of) if r.launcher_of else None
            ok = vmi is not None and vmi.namespace == r.namespace and resource in vmi.names and vmi.requester == owner
        else:
            ok = r.requester == owner
        if not ok:
            out.append(r)
    return tuple(sorted(set(out)))


def name_objects(objects: Sequence[object], limit: int = MAX_NAMED_OBJECTS) -> str:
    """`a, b, c` or `a, b, c, d, e and 3 more`: messages stay short however many objects there are."""
    named = ", ".join(str(o) for o in objects[:limit])
    more = len(objects) - limit
    return f"{named} and {more} more" if more > 0 else named


def offered(resource: str) -> Condition:
    return Condition(OFFERED, True, OFFERED_REASON, OFFERED_MESSAGE.format(resource=resource))


def offer_condition(resource: str, owner: str, requests: ClusterRequests) -> Condition:
    """Whether a name may be offered for the first time: only when nothing foreign asks for it, and only when the
    agent could look (a kind it may not list holds the offer back: it fails closed)."""
    if requests.unreadable:
        kinds = ", ".join(requests.unreadable)
        return Condition(
            OFFERED, False, REQUESTS_UNREADABLE, REQUESTS_UNREADABLE_MESSAGE.format(resource=resource, kinds=kinds)
        )
    foreign = foreign_requests(resource, requests.by_name.get(resource, ()), owner, requests.vmis)
    if not foreign:
        return offered(resource)
    one = len(foreign) == 1
    message = FOREIGN_REQUESTS_MESSAGE.format(
        resource=resource,
        objects=name_objects(foreign),
        verb="asks" if one else "ask",
        pronoun="is" if one else "are",
        owner=owner,
    )
    return Condition(OFFERED, False, FOREIGN_REQUESTS, message)


def already_offered(
    claim_status: Mapping[str, Any], *, adopted: bool, name_on_device: bool, enabled_before: bool
) -> bool:
    """Whether a claim's name was offered before, so the gate is not run again (an idle agent lists nothing).

    Claims the takeover adopted were offered by upstream, and a claim an earlier agent enabled under the same name
    (an upgrade: `enabled_before`) was offered by it; otherwise condition Offered=True says so. `name_on_device`:
    the device carries the name (a PCI device's status.resourceName; always for USB), so a claim whose name changes
    (the cluster's naming mode) is gated again for the new one.
    """
    if adopted:
        return True
    if not name_on_device:
        return False
    c = condition(claim_status, OFFERED)
    return enabled_before or (c is not None and c.get("status") == "True")


def offered_by_others(
    resource: str, claim_name: str, claims: Iterable[Mapping[str, Any]], device_names: Mapping[str, str]
) -> bool:
    """Whether another live claim already offers `resource` (a pooled name shared by a model's devices, possibly on
    another node): then this claim is not the name's first offer, and a tenant's pooled VM must not hold it back.
    `device_names`: PCIDevice name -> its status.resourceName."""
    for c in claims:
        meta = c.get("metadata") or {}
        name = str(meta.get("name", ""))
        if name == claim_name or meta.get("deletionTimestamp"):
            continue
        st = c.get("status") or {}
        was = condition(st, OFFERED)
        if not (st.get("passthroughEnabled") is True or (was is not None and was.get("status") == "True")):
            continue
        if device_names.get(name) == resource:
            return True
    return False


# -- the allocation audit (issue 21): whom the kubelet handed a device to -----------------------------------------

ALLOCATION = "Allocation"
ALLOCATION_EXPECTED = "Expected"
ALLOCATION_UNEXPECTED = "Unexpected"
UNEXPECTED_ALLOCATION_EVENT = "UnexpectedAllocation"
ALLOCATION_EXPECTED_MESSAGE = "allocated to virt-launcher pods of admitted VMIs: {pods}"
ALLOCATION_UNEXPECTED_MESSAGE = (
    "the kubelet allocated {resource} to {pods}, which {verb} not the virt-launcher pod of a VMI the webhook admitted "
    "for it; find out how {pronoun} got the device and delete {pronoun}"
)
UNEXPECTED_ALLOCATION_EVENT_MESSAGE = (
    "the kubelet allocated {resource} to pod {pod}, which is not the virt-launcher pod of a VMI the webhook admitted "
    "for it"
)


@dataclass(frozen=True, order=True)
class Holding:
    """A pod the kubelet allocated a device to; `expected` None when the pod could not be read (it is gone)."""

    pod: str  # namespace/name
    expected: bool | None


def admitted_launcher(vmi: hostdevices.Workload | None, uid: str, resource: str) -> bool:
    """Whether a launcher pod whose controller is the VMI with `uid` may hold `resource`: the VMI (`vmi`, as read
    from its pod's namespace; None when it is gone) has that uid, carries the webhook's admission record and names
    the resource (in any field)."""
    return (
        vmi is not None and bool(uid) and vmi.uid == uid and vmi.requester is not None and resource in vmi.device_names
    )


def unexpected_pods(holdings: Iterable[Holding]) -> tuple[str, ...]:
    return tuple(sorted({h.pod for h in holdings if h.expected is False}))


def allocation_condition(resource: str, holdings: Sequence[Holding]) -> Condition | None:
    """Allocation=False naming the unexpected pods, True when every holder is expected, None when nothing holds the
    device (the condition is then dropped)."""
    judged = [h for h in holdings if h.expected is not None]
    if not judged:
        return None
    bad = unexpected_pods(judged)
    if bad:
        one = len(bad) == 1
        message = ALLOCATION_UNEXPECTED_MESSAGE.format(
            resource=resource,
            pods=name_objects([f"pod {p}" for p in bad]),
            verb="is" if one else "are",
            pronoun="it" if one else "they",
        )
        return Condition(ALLOCATION, False, ALLOCATION_UNEXPECTED, message)
    pods = name_objects(sorted({f"pod {h.pod}" for h in judged}))
    return Condition(ALLOCATION, True, ALLOCATION_EXPECTED, ALLOCATION_EXPECTED_MESSAGE.format(pods=pods))


def new_offenders(
    unexpected: Sequence[str], reported: Set[str] | None, previous: Mapping[str, Any] | None
) -> tuple[str, ...]:
    """The unexpected pods not announced yet (one Warning Event each). `reported` is what this process announced
    for the claim; on its first look (None) the pods the claim's Allocation=False condition already names count as
    announced, so an agent restart does not repeat the Events."""
    if reported is None:
        reported = set()
        if previous is not None and previous.get("status") == "False":
            reported = set(str(previous.get("message", "")).replace(",", " ").split())
    return tuple(p for p in unexpected if p not in reported)

