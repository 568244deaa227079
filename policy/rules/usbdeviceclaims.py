"""USBDeviceClaim rules: A1u (the device exists; UI-made claims carry only spec.userName, or also the node and
controller address, which must then match), A5 (the host controller and its IOMMU group stay with the host), the
owner rule, A6 and A7 (shared with PCI claims, in claims.py).

Checks on CREATE run in this order: identity and owner, claim permission, A1u, A11 on spec.pciAddress, A5.
"""

from __future__ import annotations

from policy import decision, messages, names
from policy.decision import Decision
from policy.objects import Claim, USBDevice, USBDeviceClaim
from policy.rules import claims
from policy.rules.context import Context
from policy.snapshot import ClusterView

KIND = claims.ClaimKind(
    kind="usbdeviceclaim",
    resource="usbdeviceclaims",
    device_kind="usbdevice",
    device_api_kind="USBDevice",
    device_resource="usbdevices",
    parse=USBDeviceClaim.from_dict,
)


def validate(ctx: Context) -> Decision:
    op = ctx.request.operation
    if op == "CREATE" and not ctx.request.sub_resource:
        return validate_create(ctx)
    if op == "UPDATE":
        return claims.validate_update(ctx, KIND, lambda c: _node_of(ctx.view, c))
    if op == "DELETE" and not ctx.request.sub_resource:
        return claims.validate_delete(ctx, KIND, ctx.view.usbdeviceclaim, lambda c: _node_of(ctx.view, c))
    return decision.allow()


def mutate(ctx: Context) -> Decision:
    device = ctx.view.usbdevice(claims.meta_name(ctx.request.object, ctx.request.name))
    return claims.mutate_create(ctx, KIND, device, device.node_name if device is not None else "")


def _node_of(view: ClusterView, claim: Claim) -> str:
    device = view.usbdevice(claim.name)
    return device.node_name if device is not None and device.node_name else claim.node_name


def validate_create(ctx: Context) -> Decision:
    obj = ctx.new()
    if isinstance(obj, Decision):
        return obj
    claim = claims.parse(KIND, obj, ctx.request.name)
    if isinstance(claim, Decision):
        return claim
    assert isinstance(claim, USBDeviceClaim)
    f = KIND.fields(claim.name)
    denial = claims.check_creator(ctx, KIND, claim)
    if denial is not None:
        return denial
    view = ctx.view
    device = view.usbdevice(claim.name)
    if device is None:
        return decision.deny("A1u", messages.DEVICE_MISSING.format(**f))
    if claim.pci_address and not names.is_pci_address(claim.pci_address):
        return decision.deny(
            "A11", messages.BAD_ADDRESS.format(**f, field="spec.pciAddress", value=messages.shown(claim.pci_address))
        )
    for field, value, actual in (
        ("spec.nodeName", claim.node_name, device.node_name),
        ("spec.pciAddress", claim.pci_address, device.pci_address),
    ):
        if value and value != actual:
            return decision.deny(
                "A1u",
                messages.DEVICE_FIELD_MISMATCH.format(
                    **f, field=field, value=messages.shown(value), actual=messages.shown(actual)
                ),
            )
    denial = claims.check_device_links(KIND, claim, device, view.usbdeviceclaim(claim.name))
    if denial is not None:
        return denial
    denial = check_controller(view, claim, device)
    if denial is not None:
        return denial
    if device.observe_only:
        return decision.allow([messages.WARN_OBSERVE_ONLY.format(**f, node=messages.shown(device.node_name))])
    return decision.allow()


def check_controller(view: ClusterView, claim: USBDeviceClaim, device: USBDevice) -> Decision | None:
    """A5: neither the USB device's host controller nor any member of the controller's IOMMU group is PCI-claimed."""
    if not device.pci_address:
        return None
    controller = view.pcidevice_by_address(device.node_name, device.pci_address)
    if controller is None:
        return None
    name, shown_controller = messages.shown(claim.name), messages.shown(controller.name)
    controller_claim = view.pcideviceclaim(controller.name)
    if controller_claim is not None:
        return decision.deny(
            "A5",
            messages.USB_CONTROLLER_CLAIMED.format(
                name=name, controller=shown_controller, other=messages.shown(controller_claim.owner)
            ),
        )
    addresses = {m.address for m in controller.iommu_group_members if not m.bridge}
    members = {m.name: m for m in view.pcidevices_in_group(controller.node_name, controller.iommu_group)}
    for address in sorted(addresses):
        member = view.pcidevice_by_address(controller.node_name, address)
        if member is not None:
            members.setdefault(member.name, member)
    for member_name in sorted(members):
        member_claim = view.pcideviceclaim(member_name)
        if member_claim is not None:
            return decision.deny(
                "A5",
                messages.USB_CONTROLLER_GROUP_CLAIMED.format(
                    name=name,
                    controller=shown_controller,
                    group=messages.shown(controller.iommu_group),
                    member=messages.shown(member_name),
                    other=messages.shown(member_claim.owner),
                ),
            )
    return None
