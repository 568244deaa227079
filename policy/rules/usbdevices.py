"""USBDevice rules: written only by the node's agent, the garbage collector, the takeover and cluster-admins
(A10, A10u); deleted only while unclaimed or once the node is gone (A8); ids, paths and addresses always in their
exact forms, since the agent builds /dev paths from them (A11)."""

from __future__ import annotations

import re

from policy import decision, names
from policy.decision import Decision
from policy.objects import Claim, Device, USBDevice
from policy.rules import devices
from policy.rules.context import Context

NAME_SUFFIX = re.compile(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9]{6}")
_ID = re.compile(r"[0-9a-f]{4}")
_DEVICE_PATH = re.compile(r"/dev/bus/usb/([0-9]{3})/([0-9]{3})")


def _lookup(ctx: Context, name: str) -> Device | None:
    return ctx.view.usbdevice(name)


def _claim_of(ctx: Context, name: str) -> Claim | None:
    return ctx.view.usbdeviceclaim(name)


def _check_fields(device: Device) -> Decision | None:
    assert isinstance(device, USBDevice)
    for field, value in (("status.vendorID", device.vendor_id), ("status.productID", device.product_id)):
        if value and not _ID.fullmatch(value):
            return devices.bad_field("usbdevice", device.name, field, "of 4 lower-case hex digits", value)
    if device.device_path and not _DEVICE_PATH.fullmatch(device.device_path):
        return devices.bad_field(
            "usbdevice", device.name, "status.devicePath", "of the form /dev/bus/usb/BBB/DDD", device.device_path
        )
    for field, number in (("status.busNum", device.bus_num), ("status.devNum", device.dev_num)):
        if number is not None and not 0 < number < 1000:
            return devices.bad_field("usbdevice", device.name, field, "from 1 to 999", number)
    if device.pci_address and not names.is_pci_address(device.pci_address):
        return devices.bad_address("usbdevice", device.name, "status.pciAddress", device.pci_address)
    return None


def _bus_dev(device: USBDevice) -> tuple[int, int] | None:
    if device.bus_num is not None and device.dev_num is not None:
        return device.bus_num, device.dev_num
    m = _DEVICE_PATH.fullmatch(device.device_path)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _expected_name(node: str, device: Device) -> tuple[str, str, str] | None:
    assert isinstance(device, USBDevice)
    bus_dev = _bus_dev(device)
    if not device.vendor_id or not device.product_id or bus_dev is None:
        return None
    bus, dev = bus_dev
    what = "its vendor and product ids and bus and device numbers"
    value = f"{device.vendor_id}:{device.product_id} {bus:03d}/{dev:03d}"
    return names.usbdevice_name(node, device.vendor_id, device.product_id, bus, dev), what, value


KIND = devices.DeviceKind(
    kind="usbdevice",
    claim_kind="usbdeviceclaim",
    parse=USBDevice.from_dict,
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
