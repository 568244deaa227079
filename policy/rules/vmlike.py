"""A9 and A9v for every kind that names host devices: VMs, VMIs, pools, replica sets and instancetypes.

The per-plural modules (virtualmachines.py, ...) are thin and call `validate`/`mutate` here with their kind.

Judged: CREATE, and UPDATE when the devices asked for (`hostDevices`, `gpus`, extended resources in
`domain.resources`) changed as a multiset, the instancetype reference changed, or the admission record changed (the
UI reorders entries and saves whole objects); objects being deleted are judged like any other. Only entries whose
names are ours (policy.offers: offered, or computable before a device is offered) are judged; vGPU and other
providers' entries pass. Checks, in order, stopping at the first violation:

1. an entry named like one of our devices asks for that device's resource name, and every name of ours is one a
   device is offered under now (not a device's name before its claim, nor a name of a device that does not exist);
2. every device is claimed; 3. all devices are on one node (pooled names: a node holding enough claimed devices);
4. the requester holds `use` on each device in the object's namespace (configured identities are exempt);
5. no VM or VMI of another requester names the device (through an instancetype too); 6. every PCI device's IOMMU
   group is claimed by one owner and named whole.

Who the requester is (policy.records): the authenticated user for a direct request; for what virt-controller writes,
the requester recorded on the object it writes for: the VM or replica set of a VMI (A9v, the last gate before a
device reaches a launcher pod), the pool of a VM, the restore whose mark KubeVirt puts on a restored or cloned VM.
virt-controller's own identity never stands for anyone. The mutator stamps the record; the validator refuses any
other value. A VMI is judged on its own devices (virt-controller has applied the instancetype by then), against the
cluster as it is at that moment.

The mutator appends same-owner claimed IOMMU siblings to `hostDevices` and, with pooled names, pins the VM to its
devices' node by a required node affinity on `metadata.name`; as a JSON patch only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy import decision, dra, hostdevices, messages, names, offers, records
from policy.decision import Decision, Hold
from policy.hostdevices import HostDevice, Workload
from policy.objects import Device, MalformedObject, PCIDevice
from policy.records import Requester
from policy.rules.context import Context
from policy.rules.identity import Role
from policy.snapshot import ClusterView

OWNER_KINDS = {
    hostdevices.VMI: (hostdevices.VM, hostdevices.REPLICA_SET),
    hostdevices.VM: (hostdevices.POOL,),
}
# kinds that hold a device while they run or make objects that do (exclusivity, holds), and carry admission records;
# instancetypes and snapshot contents do neither (their devices are judged for the requester of the VM using them)
HOLDER_KINDS = (hostdevices.VM, hostdevices.VMI, hostdevices.POOL, hostdevices.REPLICA_SET)
_RECORD_POINTER = "/metadata/annotations/" + records.ANNOTATION.replace("~", "~0").replace("/", "~1")


def validate(ctx: Context, kind: str) -> Decision:
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE"):
        return decision.allow()
    if kind == hostdevices.VMI and r.operation == "UPDATE":
        # a VMI's devices are fixed at creation (KubeVirt rejects spec changes); its record is fixed with them
        if record_value(r.object) != record_value(r.old_object):
            return record_denial(ctx, kind, record_value(r.object), record_value(r.old_object))
        return decision.allow()
    parsed = subject(ctx, kind)
    if isinstance(parsed, Decision) or parsed is None:
        return parsed or decision.allow()
    workload, obj = parsed
    entries = expanded(ctx.view, workload)
    mine = ours(ctx.view, entries)
    traced = requester(ctx, workload)
    expected = expected_record(traced) if kind in HOLDER_KINDS else record_value(obj)
    if record_value(obj) != expected:
        return record_denial(ctx, kind, record_value(obj), expected)
    if not mine:
        return decision.allow()
    if isinstance(traced, str):
        return decision.deny("A9v", traced)
    plan = _plan(ctx, workload, entries, traced, strict=not _made_for_owner(ctx, workload))
    if isinstance(plan, Decision):
        return plan
    if plan.pin and kind in hostdevices.POD_SPEC_PATHS and workload.node != plan.node:
        return decision.deny(
            "pool",
            messages.POOL_PIN.format(
                kind=kind.lower(),
                name=messages.shown(workload.name),
                node=messages.shown(plan.node),
                pinned=messages.shown(workload.node) if workload.node else "no node",
            ),
        )
    return decision.allow(holds=plan.holds)


def mutate(ctx: Context, kind: str) -> Decision:
    """The admission record stamped; same-owner claimed IOMMU siblings appended, pooled VMs pinned; never a denial
    (the validator explains)."""
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE") or kind not in hostdevices.DEVICE_PATHS:
        return decision.allow()
    if kind == hostdevices.VMI and r.operation == "UPDATE":
        return decision.allow()
    parsed = subject(ctx, kind)
    if isinstance(parsed, Decision) or parsed is None:
        return decision.allow()
    workload, obj = parsed
    entries = expanded(ctx.view, workload)
    mine = ours(ctx.view, entries)
    traced = requester(ctx, workload)
    ops = record_ops(obj, expected_record(traced)) if kind in HOLDER_KINDS else []
    if kind in hostdevices.POD_SPEC_PATHS and not _made_for_owner(ctx, workload):
        if mine and isinstance(traced, Requester):
            plan = _plan(ctx, workload, entries, traced, strict=False)
            if isinstance(plan, Plan):
                ops.extend(_completion_ops(obj, kind, workload, plan))
    return decision.patched(ops) if ops else decision.allow()


def _completion_ops(obj: Mapping[str, Any], kind: str, w: Workload, plan: Plan) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    if plan.siblings:
        path = (*hostdevices.DEVICE_PATHS[kind], "hostDevices")
        entries = [{"name": s.name, "deviceName": s.resource_name} for s in plan.siblings]
        if isinstance(_dig_any(obj, path), list):
            pointer = hostdevices.json_pointer(path)
            ops.extend({"op": "add", "path": f"{pointer}/-", "value": e} for e in entries)
        else:
            ops.append(_add_nested(obj, path, entries))
    if plan.pin and plan.node and w.node != plan.node:
        ops.extend(_pin_ops(obj, kind, plan.node))
    return ops


# -- the subject ------------------------------------------------------------------------------------------------


def subject(ctx: Context, kind: str) -> tuple[Workload, Mapping[str, Any]] | Decision | None:
    """(view, object) to judge, None when the request needs no judgement, or a 400 Decision."""
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    if ctx.request.operation == "UPDATE":
        old = ctx.request.old_object
        if (
            old is not None
            and hostdevices.device_set(old) == hostdevices.device_set(obj)
            and hostdevices.instancetype_of(old) == hostdevices.instancetype_of(obj)
            and record_value(old) == record_value(obj)
            and hostdevices.scheduling(old) == hostdevices.scheduling(obj)
        ):
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
    return Workload(
        w.kind,
        namespace,
        w.name,
        w.uid,
        w.devices,
        w.instancetype,
        w.controller,
        w.node,
        w.deleting,
        w.requester,
        w.last_restore,
    )


def expanded(view: ClusterView, w: Workload) -> tuple[HostDevice, ...]:
    """The object's entries plus those of its instancetype (when the view holds it)."""
    if w.instancetype is None:
        return w.devices
    it_kind, it_name = w.instancetype
    namespace = "" if it_kind == hostdevices.CLUSTER_INSTANCETYPE else w.namespace
    it = view.workload(it_kind, namespace, it_name)
    return tuple(sorted(w.devices + it.devices)) if it is not None else w.devices


def ours(view: ClusterView, entries: Sequence[HostDevice]) -> tuple[str, ...]:
    """The sorted deviceNames of entries whose names are ours (offered now, or computable before an offer)."""
    return tuple(sorted(e.device_name for e in entries if offers.is_ours(view, e.device_name)))


# -- who asked (policy.records) ---------------------------------------------------------------------------------


def requester(ctx: Context, w: Workload) -> Requester | str:
    """The requester whose `use` w's devices are judged by, or why nobody can be named (a denial text)."""
    user = ctx.request.user
    if user.username in ctx.settings.virt_controller_usernames:
        return _traced(ctx, w)
    if ctx.identity.role is Role.MIGRATION and w.requester is not None:
        return w.requester  # the takeover records the VMs it adopts (takeover.plan)
    return Requester.of(user)


def _traced(ctx: Context, w: Workload) -> Requester | str:
    """The requester of the object virt-controller writes w for: an owner (A9v) or a restore."""
    view, name, user = ctx.view, messages.shown(w.name), ctx.user
    kind = w.kind.lower()
    ref = w.controller
    if w.kind == hostdevices.VMI or (w.kind == hostdevices.VM and ref is not None and ref.kind == hostdevices.POOL):
        if ref is None or ref.kind not in OWNER_KINDS[w.kind]:
            why = "it has no controller ownerReference to a " + " or ".join(k.lower() for k in OWNER_KINDS[w.kind])
            return messages.VMI_OWNER_UNKNOWN.format(kind=kind, name=name, user=user, why=why)
        owner = view.workload(ref.kind, w.namespace, ref.name)
        if owner is None or (owner.uid and ref.uid != owner.uid) or owner.deleting:
            why = f"{ref.kind.lower()} {messages.shown(ref.name)} with uid {messages.shown(ref.uid)} is not known"
            return messages.VMI_OWNER_UNKNOWN.format(kind=kind, name=name, user=user, why=why)
        if owner.requester is None:
            return no_record(kind, name, ref.kind.lower(), f"{w.namespace}/{ref.name}")
        return owner.requester.traced(f"{ref.kind.lower()} {w.namespace}/{ref.name}")
    if w.kind == hostdevices.VM and w.last_restore:
        restore = view.restore_by_mark(w.namespace, w.last_restore)
        if restore is None:
            why = f"its {hostdevices.LAST_RESTORE_ANNOTATION} {messages.shown(w.last_restore)} names no restore known"
            return messages.CONTROLLER_UNTRACED.format(kind=kind, name=name, user=user, why=why)
        if restore.requester is None:
            return no_record(kind, name, "virtualmachinerestore", restore.key)
        return restore.requester.traced(f"virtualmachinerestore {restore.key}")
    why = f"it belongs to no pool and carries no {hostdevices.LAST_RESTORE_ANNOTATION} of a restore"
    return messages.CONTROLLER_UNTRACED.format(kind=kind, name=name, user=user, why=why)


def no_record(kind: str, name: str, owner_kind: str, owner_key: str) -> str:
    """Why an object written for `owner_key` cannot be judged: the owner carries no admission record."""
    return messages.NO_RECORD.format(
        kind=kind, name=name, owner_kind=owner_kind, owner=messages.shown(owner_key), annotation=records.ANNOTATION
    )


def expected_record(traced: Requester | str) -> str | None:
    """The record a judged object must carry: the requester, whenever there is one. An object that names no device
    today may get one later through its instancetype, and is then judged at its VMI for this requester."""
    return None if isinstance(traced, str) else traced.encode()


def record_value(obj: Mapping[str, Any] | None) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    value = annotations.get(records.ANNOTATION) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else None


def record_ops(obj: Mapping[str, Any], expected: str | None) -> list[dict[str, Any]]:
    current = record_value(obj)
    if current == expected:
        return []
    if expected is None:
        return [{"op": "remove", "path": _RECORD_POINTER}]
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": {records.ANNOTATION: expected}}]
    return [{"op": "add", "path": _RECORD_POINTER, "value": expected}]


def record_denial(ctx: Context, kind: str, value: str | None, expected: str | None) -> Decision:
    return decision.deny(
        "record",
        messages.RECORD_MISMATCH.format(
            kind=kind.lower(),
            name=messages.shown(ctx.request.name),
            annotation=records.ANNOTATION,
            value=messages.shown(value) if value is not None else "none",
            expected=messages.shown(expected) if expected is not None else "none",
        ),
    )


def _made_for_owner(ctx: Context, w: Workload) -> bool:
    """virt-controller creating an owner's copy: any VMI it creates, and a VM its pool controller creates."""
    if ctx.request.user.username not in ctx.settings.virt_controller_usernames or w.kind not in OWNER_KINDS:
        return False
    if w.kind == hostdevices.VMI:
        return ctx.request.operation == "CREATE"
    return w.controller is not None and w.controller.kind in OWNER_KINDS[w.kind]


# -- A9 ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    node: str
    devices: tuple[Device, ...]  # every device the object may receive
    siblings: tuple[PCIDevice, ...]  # same-owner claimed IOMMU siblings it does not name yet
    pin: bool  # pooled names: pin the VM to `node`
    holds: tuple[Hold, ...]  # devices named exactly by a holder kind: one requester at a time (webhook.holds)


def plan(ctx: Context, w: Workload, entries: Sequence[HostDevice], requester: Requester) -> Plan | Decision:
    """A9 for an object a rule builds itself (the VM a restore or clone will write), groups not strict."""
    return _plan(ctx, w, entries, requester, strict=False)


def _plan(
    ctx: Context, w: Workload, entries: Sequence[HostDevice], requester: Requester, *, strict: bool
) -> Plan | Decision:
    view = ctx.view
    kind, name = w.kind.lower(), messages.shown(w.name)
    exact: dict[str, Device] = {}
    pooled: Counter[str] = Counter()
    for e in entries:
        offer = offers.resolve(view, e.device_name)
        if not offer.ours:
            continue
        resolved = offer.offered
        if not resolved:
            return decision.deny("A9", _not_offered(view, kind, name, e, offer))
        named = (view.pcidevice(e.name) or view.usbdevice(e.name)) if e.name else None
        if named is not None and named.resource_name and all(d.name != named.name for d in offer.offered):
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
        else:
            pooled[e.device_name] += 1
    if not exact and not pooled:
        return Plan("", (), (), False, ())
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
        chosen = _pool_node(ctx, w, pooled, node, requester)
        if isinstance(chosen, Decision):
            return chosen
        node, pool_devices = chosen
        devices.extend(pool_devices)
    for device in devices:
        if not _may_use(ctx, w, device, requester):
            return decision.deny(
                "A9",
                messages.VM_USE.format(
                    kind=kind,
                    name=name,
                    namespace=messages.shown(w.namespace) if w.namespace else "(cluster-wide)",
                    user=messages.shown(requester.username),
                    device_resource=_device_kind(device) + "s",
                    device=messages.shown(device.name),
                ),
            )
    holds: list[Hold] = []
    # use-exempt identities (Harvester's restore and clone) write VMs for their users: they neither hold nor conflict
    if w.kind in HOLDER_KINDS and requester.username not in ctx.settings.use_exempt_usernames:
        for device in exact.values():
            other = other_holder(ctx, w, device, requester)
            if other is not None:
                return decision.deny(
                    "A9",
                    messages.VM_TAKEN.format(
                        kind=kind,
                        name=name,
                        device_kind=_device_kind(device),
                        device=messages.shown(device.name),
                        other=f"{other.kind.lower()} {messages.shown(other.key.lstrip('/'))}",
                        other_user=messages.shown(other.requester.username) if other.requester else "nobody recorded",
                    ),
                )
            holds.append(Hold(_device_kind(device), device.name, requester.username, f"{kind} {w.key}"))
    named_resources = {e.device_name for e in entries}
    siblings: list[PCIDevice] = []
    for device in devices:
        if not isinstance(device, PCIDevice):
            continue
        found = _group(ctx, w, device, named_resources, strict=strict and device.name in exact)
        if isinstance(found, Decision):
            return found
        for s in found:
            if all(s.name != x.name for x in siblings):
                siblings.append(s)
    return Plan(node, tuple(devices), tuple(siblings), bool(pooled) and ctx.settings.pooled, tuple(holds))


def _not_offered(view: ClusterView, kind: str, name: str, e: HostDevice, offer: offers.Offer) -> str:
    """Why a name of ours cannot be asked for yet, and what to do instead."""
    f = {"kind": kind, "name": name, "field": e.field, "device_name": messages.shown(e.device_name)}
    if offer.later:
        device = offer.later[0]
        claim = _claim(view, device)
        if claim is None:
            return messages.NAME_BEFORE_CLAIM.format(
                **f,
                device_kind=_device_kind(device),
                device=messages.shown(device.name),
                claim_kind=_device_kind(device) + "claim",
            )
        if getattr(claim, "offer", "") == dra.OFFER_DRA:
            driver = dra.PCI_DRIVER if isinstance(device, PCIDevice) else dra.USB_DRIVER
            return messages.NAME_DRA.format(
                **f, device_kind=_device_kind(device), device=messages.shown(device.name), driver=driver
            )
        return messages.NAME_NOT_OFFERED.format(
            **f,
            device_kind=_device_kind(device),
            device=messages.shown(device.name),
            offered=messages.shown(device.resource_name),
        )
    if offer.pooled_models:
        return messages.NAME_POOLED_UNUSED.format(**f, models=messages.listed(offer.pooled_models))
    return messages.NAME_NO_DEVICE.format(**f, node=messages.shown(offer.node))


def _pool_node(
    ctx: Context, w: Workload, wanted: Counter[str], fixed: str, requester: Requester
) -> tuple[str, list[Device]] | Decision:
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
            if all(_may_use(ctx, w, d, requester) for d in devices):
                return node, devices
    resource, count = sorted(wanted.items())[0]
    return decision.deny(
        "A9",
        messages.VM_POOL_NODE.format(
            kind=w.kind.lower(),
            name=messages.shown(w.name),
            count=count,
            resource=messages.shown(resource),
            user=messages.shown(requester.username),
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


def other_holder(ctx: Context, w: Workload, device: Device, requester: Requester) -> Workload | None:
    """A VM or VMI of another requester that names `device` (directly or through its instancetype), if any.

    The kubelet hands a device to one running VM; VMs of one requester may share a name (a clone, a restore beside
    the original), those of two may not, so a device never waits for two tenants at once.
    """
    for h in holders(ctx, device):
        if h.kind == w.kind and h.key == w.key:
            continue
        if h.namespace == w.namespace and _related(w, h):
            continue
        if h.requester is not None and h.requester.username == requester.username:
            continue
        return h
    return None


def holders(ctx: Context, device: Device) -> list[Workload]:
    """The VMs and VMIs that name `device` and could get it: not being deleted, and, when the webhook recorded who
    asked, that requester may use the device in its namespace now. A VM whose instancetype gained someone else's
    device later names it too, but can never receive it (the VMI gate refuses), so it must not block the owner."""
    out = []
    for h in ctx.view.workloads_naming(device.resource_name):
        if h.deleting:
            continue
        if h.requester is not None and not _may_use(ctx, h, device, h.requester):
            continue
        out.append(h)
    return out


def _related(w: Workload, h: Workload) -> bool:
    """h is w's owner or one of w's children (a VM's VMI, a pool's VMs, a replica set's VMIs), uids checked."""
    if h.controller is not None and h.controller.kind == w.kind and h.controller.name == w.name:
        return not (w.uid and h.controller.uid != w.uid)
    if w.controller is not None and w.controller.kind == h.kind and w.controller.name == h.name:
        return not (h.uid and w.controller.uid != h.uid)
    return False


def _may_use(ctx: Context, w: Workload, device: Device, requester: Requester) -> bool:
    s = ctx.settings
    if not s.enforce_use or requester.username in s.use_exempt_usernames:
        return True
    if device.resource_name and device.resource_name in requester.adopted:
        return True
    return ctx.access.allowed(
        requester.user_info(),
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
