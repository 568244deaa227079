"""An in-memory HostProbe for device-plugin tests: the facts of each device are set by the test."""

from __future__ import annotations

import threading

from nodeagent.deviceplugin import health, model


class FakeHost:
    """Devices start bound to vfio-pci with a complete group and their /dev/vfio node present."""

    def __init__(self, *, iommufd: bool = False) -> None:
        self._lock = threading.Lock()
        self._pci: dict[str, health.PciFacts] = {}
        self._usb: dict[str, bool] = {}
        self.iommufd = iommufd
        self.probes = 0

    def bind(self, device: model.PciDevice, *, driver: str = "vfio-pci", cdev: str | None = None) -> None:
        member = health.GroupMember(device.address, False, driver)
        with self._lock:
            self._pci[device.address] = health.PciFacts(driver, True, (member,), cdev)

    def set_facts(self, device: model.PciDevice, facts: health.PciFacts) -> None:
        with self._lock:
            self._pci[device.address] = facts

    def plug_usb(self, device: model.UsbDevice, present: bool = True) -> None:
        with self._lock:
            self._usb[device.id] = present

    def pci_facts(self, device: model.PciDevice) -> health.PciFacts:
        with self._lock:
            self.probes += 1
            return self._pci.get(device.address, health.PciFacts(None, False, ()))

    def usb_present(self, device: model.UsbDevice) -> bool:
        with self._lock:
            return self._usb.get(device.id, False)

    def iommufd_present(self) -> bool:
        return self.iommufd
