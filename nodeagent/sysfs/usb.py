"""USB devices as the host shows them under /sys/bus/usb/devices (reads only, no policy).

Root hubs (`usbN`) and interfaces (`1-2:1.0`) are not devices a user passes through and are skipped. Identity comes
from the device's uevent (bus and device number, ids, class) in one read, with the attribute files as fallback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from nodeagent.errors import SysfsError
from nodeagent.sysfs.root import DirHandle, SysfsRoot
from policy import names

log = logging.getLogger(__name__)

USB_DEVICES = "/sys/bus/usb/devices"
_PORT_PATH = re.compile(r"^[0-9]+-[0-9]+(\.[0-9]+)*$")
_ROOT_HUB = re.compile(r"^usb[0-9]+$")
_ROOT_HUB_IN_PATH = re.compile(r"/usb[0-9]+(?=/|$)")


@dataclass(frozen=True, slots=True)
class HostUSBDevice:
    """One USB device: `port_path` is its sysfs name (`1-2.3`: bus 1, root port 2, hub port 3)."""

    port_path: str
    bus: int
    devnum: int
    vendor_id: str
    product_id: str
    device_class: int
    first_interface_class: int | None
    controller_address: str | None
    serial: str | None = None
    product_string: str | None = None
    manufacturer: str | None = None

    @property
    def device_path(self) -> str:
        return f"/dev/bus/usb/{self.bus:03d}/{self.devnum:03d}"


def _uevent(raw: bytes | None) -> dict[str, str]:
    if not raw:
        return {}
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def controller_of(resolved: str) -> str | None:
    """The host controller's PCI address: the last PCI address in the sysfs path before `/usbN`."""
    hub = _ROOT_HUB_IN_PATH.search(resolved)
    if hub is None:
        return None
    for part in reversed(resolved[: hub.start()].split("/")):
        if names.is_pci_address(part):
            return part
    return None


_FILES = (("uevent", 4096), ("serial", 256), ("product", 256), ("manufacturer", 256), ("bConfigurationValue", 8))


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace").strip() or None if raw is not None else None


def read_device(root: SysfsRoot, port_path: str) -> HostUSBDevice:
    """Read one USB device; raise SysfsError when it cannot be read (e.g. unplugged during the scan)."""
    if not _PORT_PATH.match(port_path):
        raise SysfsError(f"{port_path!r} is not a USB port path", path=port_path)
    with root.open_dir(USB_DEVICES) as bus:
        return _read_device(root, bus, port_path)


def _read_device(root: SysfsRoot, bus: DirHandle, port_path: str) -> HostUSBDevice:
    """One device (a validated port path), read relative to the open bus directory."""
    base = f"{USB_DEVICES}/{port_path}"
    # The bus entry is a relative link to the device's place in the tree, which names its host controller.
    where = bus.read_link(port_path)
    with bus.open_dir(port_path) as d:
        uevent, serial, product_string, manufacturer, config = d.read_each(_FILES)
        ev = _uevent(uevent)
        product = ev.get("PRODUCT", "").split("/")
        if len(product) >= 2 and "BUSNUM" in ev and "DEVNUM" in ev:
            vendor_id, product_id = f"{int(product[0], 16):04x}", f"{int(product[1], 16):04x}"
            bus_num, devnum = int(ev["BUSNUM"]), int(ev["DEVNUM"])
        else:
            vendor_id = f"{int(root.read_attr(base + '/idVendor'), 16):04x}"
            product_id = f"{int(root.read_attr(base + '/idProduct'), 16):04x}"
            bus_num, devnum = int(root.read_attr(base + "/busnum")), int(root.read_attr(base + "/devnum"))
        if "TYPE" in ev:
            device_class = int(ev["TYPE"].split("/")[0])
        else:
            device_class = int(root.read_attr(base + "/bDeviceClass"), 16)
        first_iface: int | None = None
        if device_class == 0:
            # Interfaces are named `<port>:<configuration>.<number>`; the first is almost always number 0 of the
            # active configuration, so try it before listing the directory.
            value = None
            if config is not None and config.strip().isdigit():
                value = d.read(f"{port_path}:{int(config)}.0/bInterfaceClass", 8)
            if value is None:
                ifaces = [c for c in d.entries() if c.startswith(port_path + ":")]
                for iface in ifaces[:1]:
                    value = d.read(f"{iface}/bInterfaceClass", 8)
            first_iface = int(value, 16) if value and value.strip() else None
    return HostUSBDevice(
        port_path=port_path,
        bus=bus_num,
        devnum=devnum,
        vendor_id=vendor_id,
        product_id=product_id,
        device_class=device_class,
        first_interface_class=first_iface,
        controller_address=controller_of(where),
        serial=_text(serial),
        product_string=_text(product_string),
        manufacturer=_text(manufacturer),
    )


def scan_usb(root: SysfsRoot) -> list[HostUSBDevice]:
    """Every USB device except root hubs, by bus and device number; unreadable ones are logged and skipped.

    The bus directory is opened once and every device read relative to it."""
    found: list[HostUSBDevice] = []
    bus = root.try_open_dir(USB_DEVICES)
    if bus is None:
        return found
    with bus:
        for entry in bus.entries():
            if ":" in entry or _ROOT_HUB.match(entry):
                continue
            if not _PORT_PATH.match(entry):
                log.warning("skipping USB entry that is not a port path", extra={"entry": entry})
                continue
            try:
                found.append(_read_device(root, bus, entry))
            except (SysfsError, ValueError) as e:
                log.warning("skipping unreadable USB device", extra={"port_path": entry, "error": str(e)})
    found.sort(key=lambda d: (d.bus, d.devnum))
    return found
