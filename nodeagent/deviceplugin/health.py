"""Device health: facts read from the host (through `SysfsRoot`) and the pure judgement made of them.

A PCI device is Healthy only while it is bound to vfio-pci, `/dev/vfio/<group>` exists and every endpoint of its
IOMMU group is bound to vfio-pci too (bridges are exempt, as the kernel's viability check exempts them); otherwise
the kernel would refuse to open the group in the VM. A USB device is Healthy while its /dev/bus/usb node exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nodeagent.deviceplugin import model
from nodeagent.errors import SysfsError
from nodeagent.sysfs.pci import is_bridge_header
from nodeagent.sysfs.root import SysfsRoot
from policy import names

VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class GroupMember:
    address: str
    bridge: bool
    driver: str | None


@dataclass(frozen=True)
class PciFacts:
    """What the host says about one device at one moment."""

    driver: str | None
    group_node: bool  # /dev/vfio/<group> exists
    members: tuple[GroupMember, ...]  # every function in /sys/kernel/iommu_groups/<group>/devices
    vfio_cdev: str | None = None  # vfio-dev/vfioN, the iommufd character device, when the kernel made one


class HostProbe(Protocol):
    """The host-facing edge the plugins read health through (tests pass fakes)."""

    def pci_facts(self, device: model.PciDevice) -> PciFacts: ...

    def usb_present(self, device: model.UsbDevice) -> bool: ...

    def iommufd_present(self) -> bool: ...


def judge_pci(device: model.PciDevice, facts: PciFacts) -> model.PciState:
    """Pure: healthy or not, with a reason a human can act on."""
    cdev = facts.vfio_cdev
    if facts.driver != VFIO_DRIVER:
        return model.PciState(device, False, f"bound to {facts.driver or 'no driver'}, not {VFIO_DRIVER}", cdev)
    if not facts.group_node:
        return model.PciState(device, False, f"/dev/vfio/{device.iommu_group} does not exist", cdev)
    if not any(m.address == device.address for m in facts.members):
        return model.PciState(device, False, f"not a member of iommu group {device.iommu_group}", cdev)
    loose = [m.address for m in facts.members if not m.bridge and m.driver != VFIO_DRIVER]
    if loose:
        return model.PciState(
            device, False, f"iommu group {device.iommu_group} incomplete: {', '.join(loose)} not on {VFIO_DRIVER}", cdev
        )
    return model.PciState(device, True, "", cdev)


def judge_usb(device: model.UsbDevice, present: bool) -> model.UsbState:
    return model.UsbState(device, present, "" if present else f"{device.dev_path} does not exist")


def scan_snapshot(resource: model.Resource, probe: HostProbe) -> model.Snapshot:
    """Probe every device of a resource; a device that cannot be read is Unhealthy, never an exception."""
    if isinstance(resource, model.UsbResource):
        try:
            present = probe.usb_present(resource.device)
        except SysfsError:
            present = False
        return model.UsbSnapshot(resource.name, judge_usb(resource.device, present))
    states = []
    for d in resource.devices:
        try:
            states.append(judge_pci(d, probe.pci_facts(d)))
        except SysfsError as e:
            states.append(model.PciState(d, False, f"cannot read host state: {e}"))
    try:
        iommufd = probe.iommufd_present()
    except SysfsError:
        iommufd = False
    return model.PciSnapshot(resource.name, tuple(states), iommufd)


class SysfsProbe:
    """HostProbe over a SysfsRoot (the live host, a fake tree or a qemu guest)."""

    def __init__(self, root: SysfsRoot) -> None:
        self._root = root

    def _driver(self, address: str) -> str | None:
        return self._root.try_link_name(self._root.sys("bus", "pci", "devices", address, "driver"))

    def _is_bridge(self, address: str) -> bool:
        """Header type 1 (PCI bridge) or 2 (CardBus) in config byte 0x0e; else a subordinate bus attribute."""
        base = self._root.sys("bus", "pci", "devices", address)
        try:
            config = self._root.read_bytes(base + "/config", 64)
        except SysfsError:
            config = b""
        if len(config) > 0x0E:
            return is_bridge_header(config[0x0E])
        return self._root.exists(base + "/subordinate_bus_number")

    def pci_facts(self, device: model.PciDevice) -> PciFacts:
        r = self._root
        group = str(device.iommu_group)
        members = tuple(
            GroupMember(a, self._is_bridge(a), self._driver(a))
            for a in r.children(r.sys("kernel", "iommu_groups", group, "devices"))
            if names.is_pci_address(a)  # a name from the host never becomes a path unchecked
        )
        cdevs = r.children(r.sys("bus", "pci", "devices", device.address, "vfio-dev"))
        return PciFacts(
            driver=self._driver(device.address),
            group_node=r.exists(r.dev("vfio", group)),
            members=members,
            # sysfs lists vfio-dev/vfioN even on kernels that make no /dev/vfio/devices node (no VFIO_DEVICE_CDEV):
            # handing such a path to a pod would fail its start, so only a node that exists counts.
            vfio_cdev=next(
                (
                    c
                    for c in cdevs
                    if c.startswith("vfio") and c[4:].isdigit() and r.exists(r.dev("vfio", "devices", c))
                ),
                None,
            ),
        )

    def usb_present(self, device: model.UsbDevice) -> bool:
        return self._root.exists(device.dev_path)

    def iommufd_present(self) -> bool:
        return self._root.exists(self._root.dev("iommu"))
