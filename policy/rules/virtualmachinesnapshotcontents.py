"""VirtualMachineSnapshotContent CREATE/UPDATE by anyone but virt-controller: the VM copy inside is judged (A9).

virt-controller writes contents as copies of VMs it snapshots (already admitted, and judged again when restored);
anyone else who writes one (a namespace editor may) writes a VM that a restore can bring back, so its devices need
the writer's `use`, a claim and a whole IOMMU group now. Contents hold no admission record and no device.
"""

from __future__ import annotations

from policy import decision, hostdevices
from policy.decision import Decision
from policy.records import Requester
from policy.rules import vmlike
from policy.rules.context import Context

KIND = hostdevices.SNAPSHOT_CONTENT


def validate(ctx: Context) -> Decision:
    r = ctx.request
    if r.sub_resource or r.operation not in ("CREATE", "UPDATE"):
        return decision.allow()
    if r.user.username in ctx.settings.virt_controller_usernames:
        return decision.allow()
    parsed = vmlike.subject(ctx, KIND)
    if isinstance(parsed, Decision) or parsed is None:
        return parsed or decision.allow()
    workload, _ = parsed
    entries = vmlike.expanded(ctx.view, workload)
    if not vmlike.ours(ctx.view, entries):
        return decision.allow()
    plan = vmlike.plan(ctx, workload, entries, Requester.of(r.user))
    return plan if isinstance(plan, Decision) else decision.allow()


def mutate(ctx: Context) -> Decision:
    return decision.allow()
