"""PCIDeviceClaim rules: A1 (device exists and matches), A2 (IOMMU on), A3 (group completeness), A4 (no claimed
USB devices behind a controller), the owner rule, A6 and A7 (shared with USB claims, in claims.py).

Checks on CREATE run in this order and stop at the first violation: identity and owner, A11 address, claim
permission, A1, A2, host-critical device, A4, A3; unclaimed siblings become a warning.
"""

from __future__ import annotations

from collections.abc import Mapping

from policy import decision, messages, names
from policy.decision import Decision
from policy.objects import Claim, PCIDevice, PCIDeviceClaim
from policy.rules import claims
from policy.rules.context import Context
from policy.snapshot import ClusterView

KIND = claims.ClaimKind(
    kind="pcideviceclaim",
    resource="pcideviceclaims",
    device_kind="pcidevice",
    device_api_kind="PCIDevice",
    device_resource="pcidevices",
    parse=PCIDeviceClaim.from_dict,
)


def validate(ctx: Context) -> Decision:
    op = ctx.request.operation
    if op == "CREATE" and not ctx.request.sub_resource:
        return validate_create(ctx)
    if op == "UPDATE":
        return claims.validate_update(ctx, KIND, lambda c: _node_of(ctx.view, c))
    if op == "DELETE" and not ctx.request.sub_resource:
        return claims.validate_delete(ctx, KIND, ctx.view.pcideviceclaim, lambda c: _node_of(ctx.view, c))
    return decision.allow()


def mutate(ctx: Context) -> Decision:
    obj = ctx.request.object
    name = claims.meta_name(obj, ctx.request.name)
    device = ctx.view.pcidevice(name)
    spec = obj.get("spec") if obj is not None else None
    node = spec.get("nodeName") if isinstance(spec, Mapping) else None
    if not isinstance(node, str) or not node:
        node = device.node_name if device is not None else ""
    return claims.mutate_create(ctx, KIND, device, node)


def _node_of(view: ClusterView, claim: Claim) -> str:
    if claim.node_name:
        return claim.node_name
    device = view.pcidevice(claim.name)
    return device.node_name if device is not None else ""


def validate_create(ctx: Context) -> Decision:
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    claim = claims.parse(KIND, obj, ctx.request.name)
    if isinstance(claim, Decision):
        return claim
    assert isinstance(claim, PCIDeviceClaim)
    f = KIND.fields(claim.name)
    denial = claims.check_creator(ctx, KIND, claim)
    if denial is not None:
        return denial
    if not names.is_pci_address(claim.address):
        return decision.deny(
            "A11", messages.BAD_ADDRESS.format(**f, field="spec.address", value=messages.shown(claim.address))
        )
    view = ctx.view
    device = view.pcidevice(claim.name)
    if device is None:
        expected = names.pcidevice_name(claim.node_name, claim.address) if claim.node_name else ""
        if expected and expected != claim.name and view.pcidevice(expected) is not None:
            return decision.deny(
                "A1",
                messages.CLAIM_NAME.format(
                    **f,
                    node=messages.shown(claim.node_name),
                    address=messages.shown(claim.address),
                    expected=messages.shown(expected),
                ),
            )
        return decision.deny("A1", messages.DEVICE_MISSING.format(**f))
    for field, value, actual in (
        ("spec.address", claim.address, device.address),
        ("spec.nodeName", claim.node_name, device.node_name),
    ):
        if value != actual:
            return decision.deny(
                "A1",
                messages.DEVICE_FIELD_MISMATCH.format(
                    **f, field=field, value=messages.shown(value), actual=messages.shown(actual)
                ),
            )
    denial = claims.check_device_links(KIND, claim, device, view.pcideviceclaim(claim.name))
    if denial is not None:
        return denial
    if not device.iommu_group:
        return decision.deny("A2", messages.NO_IOMMU.format(name=f["name"], node=messages.shown(device.node_name)))
    if device.host_critical:
        return decision.deny("A3", messages.HOST_CRITICAL.format(name=f["name"], reasons=_reasons(device)))
    if device.is_usb_controller:
        usb_claims = _usb_claims_behind(view, device)
        if usb_claims:
            return decision.deny(
                "A4", messages.USB_BEHIND_CONTROLLER.format(name=f["name"], claims=messages.listed(usb_claims))
            )
    group = check_group(view, claim, device)
    if isinstance(group, Decision):
        return group
    if ctx.settings.pooled and not claim.disable_resource_pooling:
        denial = check_pool_owner(view, claim, device)
        if denial is not None:
            return denial
    warnings = []
    if device.observe_only:
        warnings.append(messages.WARN_OBSERVE_ONLY.format(**f, node=messages.shown(device.node_name)))
    if group:
        warnings.append(
            messages.WARN_SIBLINGS.format(
                name=f["name"],
                group=messages.shown(device.iommu_group),
                node=messages.shown(device.node_name),
                siblings=messages.listed(group),
                owner=messages.shown(claim.owner),
            )
        )
    return decision.allow(warnings)


def check_group(view: ClusterView, claim: PCIDeviceClaim, device: PCIDevice) -> Decision | list[str]:
    """A3: every other non-bridge member of the device's IOMMU group is known, not host-critical, not owned by
    someone else and no USB controller with claimed USB devices. Returns the unclaimed siblings' names."""
    node, group = device.node_name, device.iommu_group
    members = {m.address: m.bridge for m in device.iommu_group_members}
    for known in view.pcidevices_in_group(node, group):
        members.setdefault(known.address, False)
    name, shown_group = messages.shown(claim.name), messages.shown(group)
    siblings = []
    for address in sorted(members):
        if address == device.address or members[address]:
            continue
        member = view.pcidevice_by_address(node, address)
        if member is None:
            return decision.deny(
                "A3",
                messages.GROUP_UNKNOWN_MEMBER.format(
                    name=name, group=shown_group, node=messages.shown(node), address=messages.shown(address)
                ),
            )
        shown_member = messages.shown(member.name)
        if member.host_critical:
            return decision.deny(
                "A3",
                messages.GROUP_CRITICAL_MEMBER.format(
                    name=name, group=shown_group, member=shown_member, reasons=_reasons(member)
                ),
            )
        member_claim = view.pcideviceclaim(member.name)
        if member_claim is not None and member_claim.owner != claim.owner:
            return decision.deny(
                "A3",
                messages.GROUP_OWNED_MEMBER.format(
                    name=name, group=shown_group, member=shown_member, other=messages.shown(member_claim.owner)
                ),
            )
        if member.is_usb_controller:
            usb_claims = _usb_claims_behind(view, member)
            if usb_claims:
                return decision.deny(
                    "A3",
                    messages.GROUP_USB_MEMBER.format(
                        name=name, group=shown_group, member=shown_member, claims=messages.listed(usb_claims)
                    ),
                )
        if member_claim is None:
            siblings.append(member.name)
    return siblings


def check_pool_owner(view: ClusterView, claim: PCIDeviceClaim, device: PCIDevice) -> Decision | None:
    """Pooled resource names: the devices of one vendor:device on a node form one pool, and a pool has one owner."""
    for other in view.pcidevices_of_model(device.node_name, device.vendor_id, device.device_id):
        other_claim = view.pcideviceclaim(other.name) if other.name != device.name else None
        if other_claim is not None and other_claim.owner != claim.owner and not other_claim.disable_resource_pooling:
            return decision.deny(
                "pool",
                messages.POOL_OWNER.format(
                    name=messages.shown(claim.name),
                    node=messages.shown(device.node_name),
                    model=messages.shown(f"{device.vendor_id}:{device.device_id}"),
                    other_claim=messages.shown(other.name),
                    other=messages.shown(other_claim.owner),
                ),
            )
    return None


def _usb_claims_behind(view: ClusterView, controller: PCIDevice) -> list[str]:
    return [
        usb.name
        for usb in view.usbdevices_behind_controller(controller.node_name, controller.address)
        if view.usbdeviceclaim(usb.name) is not None
    ]


def _reasons(device: PCIDevice) -> str:
    return ", ".join(device.host_critical_reasons) or "flagged by the node agent"
