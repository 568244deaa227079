"""Rules shared by VirtualMachineRestore and VirtualMachineClone: who asked, the record, and the VM they would write.

Both make virt-controller write a VM. That write is judged when it happens, by the requester recorded here
(vmlike traces the VM to its restore, a clone's restore to its clone), so the record is what matters; the check at
this object's admission is the early, readable answer: the devices the resulting VM would name (the snapshot's copy
or the source VM, plus every name a patch adds) need `use` in the namespace, a claim and a whole IOMMU group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from policy import copies, decision, hostdevices, messages, offers
from policy.copies import Patches
from policy.decision import Decision
from policy.hostdevices import HostDevice, Workload
from policy.objects import MalformedObject
from policy.records import Requester
from policy.rules import vmlike
from policy.rules.context import Context

PATCHES_FIELD = "patches"


def validate(
    ctx: Context,
    kind: str,
    requester_of: Callable[[Context, Any], Requester | str],
    resulting: Callable[[Context, Any], tuple[str, tuple[HostDevice, ...]]],
) -> Decision:
    """Record check, then A9 on the VM the object would make (`resulting`: its name and entries)."""
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE"):
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    parsed = _parse(ctx, kind, obj)
    if isinstance(parsed, Decision):
        return parsed
    if r.operation == "UPDATE" and vmlike.record_value(r.old_object) == vmlike.record_value(obj):
        return decision.allow()  # KubeVirt rejects spec changes; only a changed record needs a look
    traced = requester_of(ctx, parsed)
    expected = None if isinstance(traced, str) else traced.encode()
    if vmlike.record_value(obj) != expected:
        return vmlike.record_denial(ctx, kind, vmlike.record_value(obj), expected)
    target, entries = resulting(ctx, parsed)
    if not vmlike.ours(ctx.view, entries):
        return decision.allow()
    if isinstance(traced, str):
        return decision.deny("A9", traced)
    w = Workload(hostdevices.VM, r.namespace, target, "", entries, None, None, "", False, traced)
    plan = vmlike.plan(ctx, w, entries, traced)
    return plan if isinstance(plan, Decision) else decision.allow()


def mutate(ctx: Context, kind: str, requester_of: Callable[[Context, Any], Requester | str]) -> Decision:
    """The record of who asked, stamped on every restore and clone (whether or not it names devices today)."""
    r = ctx.request
    if r.sub_resource or r.operation != "CREATE":
        return decision.allow()
    obj = r.object
    if obj is None:
        return decision.allow()
    parsed = _parse(ctx, kind, obj)
    if isinstance(parsed, Decision):
        return decision.allow()
    traced = requester_of(ctx, parsed)
    ops = vmlike.record_ops(obj, None if isinstance(traced, str) else traced.encode())
    return decision.patched(ops) if ops else decision.allow()


def patch_entries(view: Any, patches: Patches) -> tuple[HostDevice, ...]:
    """Every string a patch adds that is one of our names, as an entry of the resulting VM."""
    return tuple(HostDevice(PATCHES_FIELD, "", s) for s in patches.strings if offers.is_ours(view, s))


def instancetype_entries(ctx: Context, names: Sequence[str]) -> tuple[HostDevice, ...]:
    """The entries of instancetypes a patch points the VM at (namespaced or cluster-wide, whichever exists)."""
    out: list[HostDevice] = []
    for name in names:
        for kind, namespace in (
            (hostdevices.INSTANCETYPE, ctx.request.namespace),
            (hostdevices.CLUSTER_INSTANCETYPE, ""),
        ):
            it = ctx.view.workload(kind, namespace, name)
            if it is not None:
                out.extend(it.devices)
    return tuple(out)


def vm_entries(ctx: Context, vm: Workload | None) -> tuple[HostDevice, ...]:
    return vmlike.expanded(ctx.view, vm) if vm is not None else ()


def _parse(ctx: Context, kind: str, obj: Mapping[str, Any]) -> Any:
    try:
        return copies.parse(kind, obj)
    except MalformedObject as e:
        return decision.malformed(
            messages.MALFORMED_OBJECT.format(kind=kind.lower(), name=messages.shown(ctx.request.name), problem=e)
        )
