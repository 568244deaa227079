"""A whole fake host for the agent: a full SysfsTree (discovery sees real-looking devices, disks, USB) whose PCI
driver files behave like the kernel's through the SimKernel on the same directory.

Devices live on bus 00 of domain 0000 (`0000:00:xx.x`), where both builders put them. `unplug()` removes a
function the way a hot-unplug does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.simkernel import SimKernel, SimRoot, _Device
from tests.support.sysfs_tree import SysfsTree

ROOT_DISK_CONTROLLER = "0000:00:1f.0"


class SimHost:
    def __init__(self, base: Path, *, root_disk: bool = True) -> None:
        self.base = Path(base)
        self.tree = SysfsTree(self.base)
        self.sim = SimKernel(self.base)
        if root_disk:
            self.pci(ROOT_DISK_CONTROLLER, native="nvme", group=90, vendor="144d", device="a808", cls="010802")
            self.tree.disk("nvme0n1", pci=ROOT_DISK_CONTROLLER, partitions=(1,), subpath="nvme/nvme0")
            self.tree.mount("nvme0n1p1", "/")

    def pci(
        self,
        address: str,
        *,
        native: str | None,
        group: int,
        bridge: bool = False,
        bound: bool = True,
        **attrs: object,
    ) -> Path:
        driver = native if bound else None
        where = self.tree.pci(
            address, driver=driver, iommu_group=group, header_type=1 if bridge else 0, **attrs  # type: ignore[arg-type]
        )
        (where / "driver_override").write_text("(null)\n")
        if bridge:
            (where / "subordinate_bus_number").write_text("2\n")
        if native is not None:
            self.sim.add_driver(native)
        self.sim.devices[address] = _Device(address, native, group, bridge, driver=driver)
        return where

    def root(self) -> SimRoot:
        return self.sim.root()

    def unplug(self, address: str) -> None:
        dev = self.sim.devices.pop(address)
        if dev.driver is not None:
            (self.base / "sys/bus/pci/drivers" / dev.driver / address).unlink(missing_ok=True)
        (self.base / "sys/kernel/iommu_groups" / str(dev.group) / "devices" / address).unlink(missing_ok=True)
        self.tree.remove_pci(address)

    def replug(self, address: str, *, native: str | None, group: int) -> None:
        self.pci(address, native=native, group=group)

    def reboot(self) -> None:
        """Every device back on its native driver, overrides cleared, /dev/vfio nodes gone."""
        for dev in self.sim.devices.values():
            if dev.driver is not None:
                self.sim._unlink(dev)
            self.sim._set_override(dev, None)
            if dev.native is not None:
                self.sim._link(dev, dev.native)
        for node in (self.base / "dev/vfio").iterdir():
            if node.name != "vfio":
                node.unlink() if node.is_file() else shutil.rmtree(node)
