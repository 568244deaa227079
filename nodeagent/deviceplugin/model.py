"""What the agent asks the device plugins to serve, and the health states the plugins publish.

Plain frozen values: the agent builds `PciResource`/`UsbResource` from its claims, the health probe turns them into
`PciState`/`UsbState`, and the pure functions in `allocate` answer the kubelet from a `Snapshot`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policy import names


@dataclass(frozen=True)
class PciDevice:
    """A claimed PCI function; its address is also its device id towards the kubelet."""

    address: str
    iommu_group: int
    numa_node: int | None = None

    def __post_init__(self) -> None:
        names.pci_address(self.address)  # never let an unchecked value become a path
        if self.iommu_group < 0:
            raise ValueError(f"iommu group {self.iommu_group} of {self.address} is negative")
        if self.numa_node is not None and self.numa_node < 0:
            raise ValueError("numa_node must be None (unknown) or >= 0")

    @property
    def id(self) -> str:
        return self.address


@dataclass(frozen=True)
class UsbDevice:
    """A claimed USB device, identified by its bus and device numbers (its /dev/bus/usb node)."""

    bus: int
    devnum: int

    def __post_init__(self) -> None:
        if not (1 <= self.bus <= 999 and 1 <= self.devnum <= 999):
            raise ValueError(f"usb bus/device {self.bus}/{self.devnum} out of range")

    @property
    def id(self) -> str:
        return f"usb-{self.bus:03d}-{self.devnum:03d}"

    @property
    def dev_path(self) -> str:
        """Host path of the device node, e.g. /dev/bus/usb/002/004."""
        return f"/dev/bus/usb/{self.bus:03d}/{self.devnum:03d}"


@dataclass(frozen=True)
class PciResource:
    """One extended resource backed by PCI devices (one device for per-device names, several when pooled)."""

    name: str
    devices: tuple[PciDevice, ...]


@dataclass(frozen=True)
class UsbResource:
    """One extended resource for exactly one USB device (USB names are per device)."""

    name: str
    device: UsbDevice


Resource = PciResource | UsbResource


def build_resources(
    pci: Iterable[tuple[str, PciDevice]], usb: Iterable[tuple[str, UsbDevice]] = ()
) -> tuple[Resource, ...]:
    """The wanted plugin set from the agent's claimed devices: PCI grouped by resource name, one USB per device.

    Raises ValueError when a name is claimed twice for USB or by both PCI and USB (a naming bug upstream of us).
    """
    pooled: dict[str, dict[str, PciDevice]] = {}
    for name, device in pci:
        pooled.setdefault(name, {})[device.address] = device
    out: list[Resource] = [PciResource(n, tuple(d for _, d in sorted(devs.items()))) for n, devs in pooled.items()]
    seen = set(pooled)
    for name, udev in usb:
        if name in seen:
            raise ValueError(f"resource name {name} is used by more than one device plugin")
        seen.add(name)
        out.append(UsbResource(name, udev))
    return tuple(sorted(out, key=lambda r: r.name))


@dataclass(frozen=True)
class PciState:
    """A PCI device as last probed: healthy only when usable for passthrough; `vfio_cdev` e.g. "vfio3"."""

    device: PciDevice
    healthy: bool
    reason: str = ""
    vfio_cdev: str | None = None


@dataclass(frozen=True)
class UsbState:
    device: UsbDevice
    healthy: bool
    reason: str = ""


@dataclass(frozen=True)
class PciSnapshot:
    """Everything a PCI plugin needs to answer the kubelet; `iommufd` is whether /dev/iommu exists."""

    resource_name: str
    states: tuple[PciState, ...]
    iommufd: bool = False


@dataclass(frozen=True)
class UsbSnapshot:
    resource_name: str
    state: UsbState


Snapshot = PciSnapshot | UsbSnapshot
