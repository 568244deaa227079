"""VirtualMachineRestore CREATE (and UPDATEs that touch its record): judged by who asked (issue 22).

A restore makes virt-controller write a VM from a snapshot's copy with the restore's patches applied. The requester
is the user who creates the restore, or, for the restore a VirtualMachineClone makes, the clone's requester (its
controller ownerReference, uid checked); rules in copying.py.
"""

from __future__ import annotations

from policy import copies, hostdevices, messages
from policy.copies import Restore
from policy.decision import Decision
from policy.hostdevices import HostDevice
from policy.records import Requester
from policy.rules import copying, vmlike
from policy.rules.context import Context

KIND = copies.RESTORE


def validate(ctx: Context) -> Decision:
    return copying.validate(ctx, KIND, requester, resulting)


def mutate(ctx: Context) -> Decision:
    return copying.mutate(ctx, KIND, requester)


def requester(ctx: Context, restore: Restore) -> Requester | str:
    user = ctx.request.user
    if user.username not in ctx.settings.virt_controller_usernames:
        return Requester.of(user)
    ref = restore.controller
    name = messages.shown(restore.name)
    if ref is None or ref.kind != copies.CLONE:
        why = "it has no controller ownerReference to a virtualmachineclone"
        return messages.CONTROLLER_UNTRACED.format(kind="virtualmachinerestore", name=name, user=ctx.user, why=why)
    clone = ctx.view.copy(copies.CLONE, restore.namespace, ref.name)
    if clone is None or not isinstance(clone, copies.Clone) or (clone.uid and clone.uid != ref.uid):
        why = f"virtualmachineclone {messages.shown(ref.name)} with uid {messages.shown(ref.uid)} is not known"
        return messages.CONTROLLER_UNTRACED.format(kind="virtualmachinerestore", name=name, user=ctx.user, why=why)
    if clone.requester is None:
        return vmlike.no_record("virtualmachinerestore", name, "virtualmachineclone", clone.key)
    return clone.requester.traced(f"virtualmachineclone {clone.key}")


def resulting(ctx: Context, restore: Restore) -> tuple[str, tuple[HostDevice, ...]]:
    """The VM the restore writes: the snapshot's copy (when the view holds it) plus what its patches add."""
    view = ctx.view
    entries: list[HostDevice] = []
    snapshot = view.copy(copies.SNAPSHOT, restore.namespace, restore.snapshot)
    if isinstance(snapshot, copies.Snapshot) and snapshot.content:
        content = view.workload(hostdevices.SNAPSHOT_CONTENT, restore.namespace, snapshot.content)
        entries.extend(copying.vm_entries(ctx, content))
    entries.extend(copying.patch_entries(view, restore.patches))
    entries.extend(copying.instancetype_entries(ctx, restore.patches.instancetypes))
    return restore.target, tuple(sorted(entries))
