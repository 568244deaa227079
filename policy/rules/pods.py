"""Pod CREATE (A12): only virt-controller, for a VMI the view holds, may request one of our resource names, and
only those its VMI was admitted for (the launcher pod is what the kubelet hands devices to).

Every container, init and ephemeral container and pod-level resources are read; a name is ours when a device is
offered under it or could be (policy.offers), so a pod cannot wait for a device before it is claimed. The webhook
configuration sends every pod that requests an extended resource outside devices.kubevirt.io, virt-controller's
launcher pods included, so ordinary pods and the launchers of VMs without host devices never wait on the webhook.
A launcher pod is judged once more for the requester recorded on its VMI (a `use` revoked since the VMI was made,
a migration's new launcher long after), as the very last gate before the kubelet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from policy import decision, hostdevices, messages, offers
from policy.decision import Decision
from policy.hostdevices import HostDevice
from policy.objects import MalformedObject, OwnerReference
from policy.rules import vmlike
from policy.rules.context import Context


def validate(ctx: Context) -> Decision:
    r = ctx.request
    if r.operation != "CREATE" or r.sub_resource:
        return decision.allow()
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    view = ctx.view
    try:
        asked = hostdevices.pod_resources(obj)
    except MalformedObject as e:
        return decision.malformed(
            messages.MALFORMED_OBJECT.format(kind="pod", name=messages.shown(r.name), problem=e)
        )
    wanted = [res for res in asked if offers.is_ours(view, res)]
    if not wanted:
        return decision.allow()
    raw_meta = obj.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    name = r.name or str(meta.get("name") or meta.get("generateName") or "")
    why = ""
    if r.user.username in ctx.settings.virt_controller_usernames:
        vmi_ref = _controller(meta.get("ownerReferences"))
        vmi = view.workload(hostdevices.VMI, r.namespace, vmi_ref.name) if vmi_ref is not None else None
        if vmi is None or vmi_ref is None or (vmi.uid and vmi.uid != vmi_ref.uid):
            why = " for no virtualmachineinstance the webhook knows"
        else:
            have = Counter(vmlike.ours(view, vmlike.expanded(view, vmi)))
            if not Counter(wanted) - have:
                if vmi.requester is None:
                    return decision.allow()  # a VMI from before the webhook recorded requesters (its launcher moves)
                # the pod is what the kubelet hands devices to: `use` may have been revoked since the VMI was made
                entries = [HostDevice(hostdevices.RESOURCES_FIELD, "", res) for res in wanted]
                judged = vmlike.plan(ctx, vmi, entries, vmi.requester)
                return judged if isinstance(judged, Decision) else decision.allow()
            why = f" beyond those of virtualmachineinstance {messages.shown(vmi.name)}"
    return decision.deny(
        "A12",
        messages.POD_DEVICE.format(
            name=messages.shown(name), user=ctx.user, resources=messages.listed(wanted), why=why
        ),
    )


def mutate(ctx: Context) -> Decision:
    return decision.allow()


def _controller(refs: object) -> OwnerReference | None:
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, dict) and ref.get("controller") is True and ref.get("kind") == hostdevices.VMI:
            try:
                return OwnerReference.from_dict(ref)
            except ValueError:
                return None
    return None
