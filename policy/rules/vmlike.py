"""A9 and A9v for every kind that names host devices: VMs, VMIs, pools, replica sets and instancetypes.

The per-plural modules (virtualmachines.py, ...) are thin and call `validate`/`mutate` here with their kind.

Judged: CREATE, and UPDATE only when `hostDevices`/`gpus` changed as a multiset (the UI reorders entries and saves
whole objects); status updates and objects being deleted pass. Only entries that resolve to our resource names are
judged (vGPU and other providers' entries pass). Checks, in order, stopping at the first violation:

1. an entry named like one of our devices asks for that device's resource name;
2. every device is claimed; 3. all devices are on one node (pooled names: a node holding enough claimed devices);
4. the requester holds `use` on each device in the object's namespace (configured identities are exempt);
5. no other VM or VMI names the device; 6. every PCI device's IOMMU group is claimed by one owner and named whole.

A9v: an object virt-controller creates for an owner (VMI of a VM or replica set, VM of a pool) passes only if its
set of our devices equals the owner's as the view holds it (instancetype included); labels and ownerReferences
alone are never evidence, only the requester's identity together with the owner in the view (uid checked).

The mutator appends same-owner claimed IOMMU siblings to `hostDevices` and, with pooled names, pins the VM to its
devices' node by a required node affinity on `metadata.name`; as a JSON patch only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy import decision, hostdevices, messages, names
from policy.decision import Decision
from policy.hostdevices import HostDevice, Workload
from policy.objects import Device, MalformedObject, PCIDevice
from policy.rules.context import Context
from policy.snapshot import ClusterView

OWNER_KINDS = {
    hostdevices.VMI: (hostdevices.VM, hostdevices.REPLICA_SET),
    hostdevices.VM: (hostdevices.POOL,),
}


def validate(ctx: Context, kind: str) -> Decision:
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE"):
        return decision.allow()
    if kind == hostdevices.VMI and r.operation == "UPDATE":
        return decision.allow()  # a VMI's devices are fixed at creation (KubeVirt rejects spec changes)
    parsed = _subject(ctx, kind)
    if isinstance(parsed, Decision) or parsed is None:
        return parsed or decision.allow()
    workload, obj = parsed
    if _made_for_owner(ctx, workload):
        return _validate_for_owner(ctx, workload)
    entries = expanded(ctx.view, workload)
    plan = _plan(ctx, workload, entries)
    return plan if isinstance(plan, Decision) else decision.allow()


def mutate(ctx: Context, kind: str) -> Decision:
    """Same-owner claimed IOMMU siblings appended, pooled VMs pinned; never a denial (the validator explains)."""
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE") or kind not in hostdevices.POD_SPEC_PATHS:
        return decision.allow()
    parsed = _subject(ctx, kind)
    if isinstance(parsed, Decision) or parsed is None:
        return decision.allow()
    workload, obj = parsed
    if _made_for_owner(ctx, workload):
        return decision.allow()  # an owner's copy: must equal the owner, not be completed
    plan = _plan(ctx, workload, expanded(ctx.view, workload), for_mutation=True)
    if isinstance(plan, Decision):
        return decision.allow()
    ops: list[dict[str, Any]] = []
    if plan.siblings:
        path = (*hostdevices.DEVICE_PATHS[kind], "hostDevices")
        entries = [{"name": s.name, "deviceName": s.resource_name} for s in plan.siblings]
        if isinstance(_dig_any(obj, path), list):
            pointer = hostdevices.json_pointer(path)
            ops.extend({"op": "add", "path": f"{pointer}/-", "value": e} for e in entries)
        else:
            ops.append(_add_nested(obj, path, entries))
    if plan.pin and plan.node and workload.node != plan.node:
        ops.extend(_pin_ops(obj, kind, plan.node))
    return decision.patched(ops) if ops else decision.allow()


# -- the subject ------------------------------------------------------------------------------------------------


def _subject(ctx: Context, kind: str) -> tuple[Workload, Mapping[str, Any]] | Decision | None:
    """(view, object) to judge, None when the request needs no judgement, or a 400 Decision."""
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    if ctx.request.operation == "UPDATE":
        old = ctx.request.old_object
        meta = obj.get("metadata")
        if isinstance(meta, Mapping) and meta.get("deletionTimestamp") is not None:
            return None
        if old is not None and hostdevices.device_set(old) == hostdevices.device_set(obj):
            if hostdevices.instancetype_of(old) == hostdevices.instancetype_of(obj):
                return None
    try:
        workload = Workload.from_dict(obj)
    except MalformedObject as e:
        return decision.malformed(
            messages.MALFORMED_OBJECT.format(kind=kind.lower(), name=messages.shown(ctx.request.name), problem=e)
        )
    if not workload.namespace and ctx.request.namespace:
        workload = _with_namespace(workload, ctx.request.namespace)
    return workload, obj


def _with_namespace(w: Workload, namespace: str) -> Workload:
    return Workload(w.kind, namespace, w.name, w.uid, w.devices, w.instancetype, w.controller, w.node, w.deleting)


def expanded(view: ClusterView, w: Workload) -> tuple[HostDevice, ...]:
    """The object's entries plus those of its instancetype (when the view holds it)."""
    if w.instancetype is None:
        return w.devices
    it_kind, it_name = w.instancetype
    namespace = "" if it_kind == hostdevices.CLUSTER_INSTANCETYPE else w.namespace
    it = view.workload(it_kind, namespace, it_name)
    return tuple(sorted(w.devices + it.devices)) if it is not None else w.devices


def ours(view: ClusterView, entries: Sequence[HostDevice]) -> tuple[str, ...]:
    """The sorted deviceNames of entries that resolve to our devices."""
    return tuple(sorted(e.device_name for e in entries if view.devices_with_resource(e.device_name)))


# -- A9v --------------------------------------------------------------------------------------------------------


def _made_for_owner(ctx: Context, w: Workload) -> bool:
    """virt-controller creating an owner's copy: any VMI it creates, and a VM its pool controller creates.

    A VM virt-controller creates or changes without a pool (KubeVirt's restore and clone run there) gets the A9
    checks, with virt-controller exempt from `use`.
    """
    if ctx.request.user.username not in ctx.settings.virt_controller_usernames or w.kind not in OWNER_KINDS:
        return False
    if w.kind == hostdevices.VMI:
        return ctx.request.operation == "CREATE"
    return w.controller is not None and w.controller.kind in OWNER_KINDS[w.kind]


def _validate_for_owner(ctx: Context, w: Workload) -> Decision:
    view = ctx.view
    mine = ours(view, expanded(view, w))
    if not mine:
        return decision.allow()
    kind, name = w.kind.lower(), messages.shown(w.name)
    ref = w.controller
    if ref is None or ref.kind not in OWNER_KINDS[w.kind]:
        why = "it has no controller ownerReference to a " + " or ".join(k.lower() for k in OWNER_KINDS[w.kind])
        return decision.deny("A9v", messages.VMI_OWNER_UNKNOWN.format(kind=kind, name=name, user=_user(ctx), why=why))
    owner = view.workload(ref.kind, w.namespace, ref.name)
    if owner is None or (owner.uid and ref.uid != owner.uid) or owner.deleting:
        why = f"{ref.kind.lower()} {messages.shown(ref.name)} with uid {messages.shown(ref.uid)} is not known"
        return decision.deny("A9v", messages.VMI_OWNER_UNKNOWN.format(kind=kind, name=name, user=_user(ctx), why=why))
    theirs = ours(view, expanded(view, owner))
    if Counter(mine) != Counter(theirs):
        return decision.deny(
            "A9v",
            messages.VMI_OWNER_MISMATCH.format(
                name=name,
                owner_kind=ref.kind.lower(),
                owner=messages.shown(ref.name),
                devices=messages.listed(mine),
                owner_devices=messages.listed(theirs) if theirs else "none",
            ),
        )
    return decision.allow()


# -- A9 ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    node: str
    devices: tuple[Device, ...]  # every device the object may receive
    siblings: tuple[PCIDevice, ...]  # same-owner claimed IOMMU siblings it does not name yet
    pin: bool  # pooled names: pin the VM to `node`


def _plan(ctx: Context, w: Workload, entries: Sequence[HostDevice], *, for_mutation: bool = False) -> Plan | Decision:
    view = ctx.view
    kind, name = w.kind.lower(), messages.shown(w.name)
    exact: dict[str, Device] = {}
    pooled: Counter[str] = Counter()
    for e in entries:
        resolved = view.devices_with_resource(e.device_name)
        named = view.pcidevice(e.name) or view.usbdevice(e.name)
        if named is not None and named.resource_name and all(d.name != named.name for d in resolved):
            return decision.deny(
                "A9",
                messages.VM_DEVICE_NAME.format(
                    kind=kind,
                    name=name,
                    device_kind=_device_kind(named),
                    device=messages.shown(named.name),
                    expected=messages.shown(named.resource_name),
                    field=e.field,
                    entry=messages.shown(e.name),
                    device_name=messages.shown(e.device_name),
                ),
            )
        if len(resolved) == 1:
            exact[resolved[0].name] = resolved[0]
        elif resolved:
            pooled[e.device_name] += 1
    if not exact and not pooled:
        return Plan("", (), (), False)
    for device in exact.values():
        if _claim(view, device) is None:
            return decision.deny(
                "A9",
                messages.VM_UNCLAIMED.format(
                    kind=kind,
                    name=name,
                    device_kind=_device_kind(device),
                    device=messages.shown(device.name),
                    resource=messages.shown(device.resource_name),
                    claim_kind=_device_kind(device) + "claim",
                ),
            )
    nodes = sorted({d.node_name for d in exact.values()})
    if len(nodes) > 1:
        return decision.deny("A9", messages.VM_NODES.format(kind=kind, name=name, nodes=messages.listed(nodes)))
    node = nodes[0] if nodes else w.node
    devices: list[Device] = list(exact.values())
    if pooled:
        chosen = _pool_node(ctx, w, pooled, node)
        if isinstance(chosen, Decision):
            return chosen
        node, pool_devices = chosen
        devices.extend(pool_devices)
    for device in devices:
        if not _may_use(ctx, w, device):
            return decision.deny(
                "A9",
                messages.VM_USE.format(
                    kind=kind,
                    name=name,
                    namespace=messages.shown(w.namespace) if w.namespace else "(cluster-wide)",
                    user=_user(ctx),
                    device_resource=_device_kind(device) + "s",
                    device=messages.shown(device.name),
                ),
            )
    if w.kind not in (hostdevices.INSTANCETYPE, hostdevices.CLUSTER_INSTANCETYPE):
        for device in exact.values():
            other = _other_holder(view, w, device)
            if other is not None:
                return decision.deny(
                    "A9",
                    messages.VM_TAKEN.format(
                        kind=kind,
                        name=name,
                        device_kind=_device_kind(device),
                        device=messages.shown(device.name),
                        other=f"{other.kind.lower()} {messages.shown(other.key.lstrip('/'))}",
                    ),
                )
    named_resources = {e.device_name for e in entries}
    siblings: list[PCIDevice] = []
    for device in devices:
        if not isinstance(device, PCIDevice):
            continue
        found = _group(ctx, w, device, named_resources, strict=device.name in exact and not for_mutation)
        if isinstance(found, Decision):
            return found
        for s in found:
            if all(s.name != x.name for x in siblings):
                siblings.append(s)
    return Plan(node, tuple(devices), tuple(siblings), bool(pooled) and ctx.settings.pooled)


def _pool_node(ctx: Context, w: Workload, wanted: Counter[str], fixed: str) -> tuple[str, list[Device]] | Decision:
    """The node whose claimed devices of every pooled name suffice and may all be used by the requester."""
    view = ctx.view
    by_node: dict[str, dict[str, list[Device]]] = {}
    for resource in wanted:
        for d in view.claimed_devices_with_resource(resource):
            by_node.setdefault(d.node_name, {}).setdefault(resource, []).append(d)
    candidates = [fixed] if fixed else sorted(by_node)
    for node in candidates:
        held = by_node.get(node, {})
        if all(len(held.get(r, ())) >= n for r, n in wanted.items()):
            devices = [d for r in sorted(wanted) for d in held[r]]
            if all(_may_use(ctx, w, d) for d in devices):
                return node, devices
    resource, count = sorted(wanted.items())[0]
    return decision.deny(
        "A9",
        messages.VM_POOL_NODE.format(
            kind=w.kind.lower(),
            name=messages.shown(w.name),
            count=count,
            resource=messages.shown(resource),
            user=_user(ctx),
            pinned=f" on node {messages.shown(fixed)}" if fixed else "",
        ),
    )


def _group(
    ctx: Context, w: Workload, device: PCIDevice, named: set[str], *, strict: bool
) -> list[PCIDevice] | Decision:
    """Same-owner claimed siblings `w` does not name yet; a Decision when the group cannot go whole to the VM.

    strict (an exactly named device, validating): a sibling that is claimed by the same owner but not named denies;
    otherwise it is returned for the mutator to append.
    """
    view = ctx.view
    claim = _claim(view, device)
    owner = claim.owner if claim is not None else ""
    f = {
        "kind": w.kind.lower(),
        "name": messages.shown(w.name),
        "device": messages.shown(device.name),
        "group": messages.shown(device.iommu_group),
        "node": messages.shown(device.node_name),
    }
    out: list[PCIDevice] = []
    for m in device.iommu_group_members:
        if m.bridge or m.address == device.address:
            continue
        member = view.pcidevice_by_address(device.node_name, m.address)
        if member is None:
            return decision.deny("A9", messages.VM_GROUP_UNKNOWN.format(**f, address=messages.shown(m.address)))
        member_claim = view.pcideviceclaim(member.name)
        if member_claim is None:
            return decision.deny(
                "A9",
                messages.VM_GROUP_UNCLAIMED.format(
                    **f, member=messages.shown(member.name), owner=messages.shown(owner or ctx.request.user.username)
                ),
            )
        if member_claim.owner != owner:
            return decision.deny(
                "A9",
                messages.VM_GROUP_OWNER.format(
                    **f, member=messages.shown(member.name), other=messages.shown(member_claim.owner)
                ),
            )
        if member.resource_name in named:
            continue
        if strict:
            return decision.deny(
                "A9",
                messages.VM_GROUP_MISSING.format(
                    **f, member=messages.shown(member.name), resource=messages.shown(member.resource_name)
                ),
            )
        if member.resource_name:
            out.append(member)
    return out


def _other_holder(view: ClusterView, w: Workload, device: Device) -> Workload | None:
    for h in view.workloads_naming(device.resource_name):
        if h.deleting or (h.kind == w.kind and h.key == w.key):
            continue
        if h.namespace == w.namespace and _related(w, h):
            continue
        return h
    return None


def _related(w: Workload, h: Workload) -> bool:
    """h is w's owner or one of w's children (a VM's VMI, a pool's VMs, a replica set's VMIs)."""
    if h.controller is not None and h.controller.kind == w.kind and h.controller.name == w.name:
        return True
    return w.controller is not None and w.controller.kind == h.kind and w.controller.name == h.name


def _may_use(ctx: Context, w: Workload, device: Device) -> bool:
    user = ctx.request.user
    s = ctx.settings
    if not s.enforce_use or user.username in s.use_exempt_usernames or user.username in s.virt_controller_usernames:
        return True
    return ctx.access.allowed(
        user,
        verb="use",
        group=names.GROUP,
        resource=_device_kind(device) + "s",
        name=device.name,
        namespace=w.namespace,
    )


def _claim(view: ClusterView, device: Device) -> Any:
    return view.pcideviceclaim(device.name) if isinstance(device, PCIDevice) else view.usbdeviceclaim(device.name)


def _device_kind(device: Device) -> str:
    return "pcidevice" if isinstance(device, PCIDevice) else "usbdevice"


def _user(ctx: Context) -> str:
    return ctx.user


# -- patches ----------------------------------------------------------------------------------------------------


def _pin_ops(obj: Mapping[str, Any], kind: str, node: str) -> list[dict[str, Any]]:
    """A required node-affinity term on metadata.name, ANDed into every existing term."""
    path = hostdevices.POD_SPEC_PATHS[kind]
    expr = {"key": hostdevices.NODE_NAME_FIELD, "operator": "In", "values": [node]}
    spec = _dig(obj, path)
    pointer = hostdevices.json_pointer(path)
    affinity = spec.get("affinity")
    if not isinstance(affinity, Mapping):
        return [{"op": "add", "path": f"{pointer}/affinity", "value": {"nodeAffinity": _required(expr)}}]
    node_affinity = affinity.get("nodeAffinity")
    if not isinstance(node_affinity, Mapping):
        return [{"op": "add", "path": f"{pointer}/affinity/nodeAffinity", "value": _required(expr)}]
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    base = f"{pointer}/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list) or not terms:
        return [{"op": "add", "path": base, "value": _required(expr)["requiredDuringSchedulingIgnoredDuringExecution"]}]
    ops: list[dict[str, Any]] = []
    for i, term in enumerate(terms):
        fields = term.get("matchFields") if isinstance(term, Mapping) else None
        if isinstance(fields, list):
            ops.append({"op": "add", "path": f"{base}/nodeSelectorTerms/{i}/matchFields/-", "value": expr})
        else:
            ops.append({"op": "add", "path": f"{base}/nodeSelectorTerms/{i}/matchFields", "value": [expr]})
    return ops


def _required(expr: Mapping[str, Any]) -> dict[str, Any]:
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [dict(expr)]}]}}


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    cursor = _dig_any(obj, path)
    return cursor if isinstance(cursor, Mapping) else {}


def _dig_any(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    cursor: Any = obj
    for key in path:
        cursor = cursor.get(key) if isinstance(cursor, Mapping) else None
    return cursor


def _add_nested(obj: Mapping[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """One `add` at the first missing key of path, carrying the rest of the path as nested objects."""
    cursor: Any = obj
    for i, key in enumerate(path):
        if not isinstance(cursor, Mapping) or key not in cursor or cursor[key] is None:
            nested: Any = value
            for rest in reversed(path[i + 1 :]):
                nested = {rest: nested}
            return {"op": "add", "path": hostdevices.json_pointer(path[: i + 1]), "value": nested}
        cursor = cursor[key]
    return {"op": "replace", "path": hostdevices.json_pointer(path), "value": value}
