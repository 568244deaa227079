"""VirtualMachineClone CREATE (and UPDATEs that touch its record): judged by who asked (issue 22).

A clone makes virt-controller snapshot its source and restore the snapshot into a new VM with the clone's patches;
the restore it makes carries the clone's requester (virtualmachinerestores.py). Rules in copying.py.
"""

from __future__ import annotations

from policy import copies, hostdevices
from policy.copies import Clone
from policy.decision import Decision
from policy.hostdevices import HostDevice
from policy.records import Requester
from policy.rules import copying
from policy.rules.context import Context

KIND = copies.CLONE


def validate(ctx: Context) -> Decision:
    return copying.validate(ctx, KIND, requester, resulting)


def mutate(ctx: Context) -> Decision:
    return copying.mutate(ctx, KIND, requester)


def requester(ctx: Context, clone: Clone) -> Requester | str:
    return Requester.of(ctx.request.user)


def resulting(ctx: Context, clone: Clone) -> tuple[str, tuple[HostDevice, ...]]:
    """The VM the clone writes: its source VM (or the snapshot's copy) plus what its patches add."""
    view = ctx.view
    entries: list[HostDevice] = []
    if clone.source_kind == hostdevices.VM:
        entries.extend(copying.vm_entries(ctx, view.workload(hostdevices.VM, clone.namespace, clone.source)))
    elif clone.source_kind == copies.SNAPSHOT:
        snapshot = view.copy(copies.SNAPSHOT, clone.namespace, clone.source)
        if isinstance(snapshot, copies.Snapshot) and snapshot.content:
            content = view.workload(hostdevices.SNAPSHOT_CONTENT, clone.namespace, snapshot.content)
            entries.extend(copying.vm_entries(ctx, content))
    entries.extend(copying.patch_entries(view, clone.patches))
    entries.extend(copying.instancetype_entries(ctx, clone.patches.instancetypes))
    return f"clone of {clone.source}", tuple(sorted(entries))
