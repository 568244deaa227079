"""PCIDevice rules: written only by the node's agent, the garbage collector, the takeover and cluster-admins
(A10, A10u); deleted only while unclaimed or once the node is gone (A8); addresses always valid (A11)."""

from __future__ import annotations

import re

from policy import decision, names
from policy.decision import Decision
from policy.objects import Claim, Device, PCIDevice
from policy.rules import devices
from policy.rules.context import Context

# What follows "<node>-" in a PCIDevice name: the address without ':' and '.' (4-8 digit domain).
NAME_SUFFIX = re.compile(r"[0-9a-f]{8,12}[0-7]")


def _lookup(ctx: Context, name: str) -> Device | None:
    return ctx.view.pcidevice(name)


def _claim_of(ctx: Context, name: str) -> Claim | None:
    return ctx.view.pcideviceclaim(name)


def _check_fields(device: Device) -> Decision | None:
    assert isinstance(device, PCIDevice)
    if device.address and not names.is_pci_address(device.address):
        return devices.bad_address("pcidevice", device.name, "status.address", device.address)
    for member in device.iommu_group_members:
        if not names.is_pci_address(member.address):
            return devices.bad_address("pcidevice", device.name, "status.iommuGroupMembers", member.address)
    return None


def _expected_name(node: str, device: Device) -> tuple[str, str, str] | None:
    assert isinstance(device, PCIDevice)
    if not device.address:
        return None
    return names.pcidevice_name(node, device.address), "status.address", device.address


KIND = devices.DeviceKind(
    kind="pcidevice",
    claim_kind="pcideviceclaim",
    parse=PCIDevice.from_dict,
    lookup=_lookup,
    claim_of=_claim_of,
    name_suffix=NAME_SUFFIX,
    check_fields=_check_fields,
    expected_name=_expected_name,
)


def validate(ctx: Context) -> Decision:
    return devices.validate(ctx, KIND)


def mutate(ctx: Context) -> Decision:
    return decision.allow()
