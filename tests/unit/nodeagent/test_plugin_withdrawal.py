"""Devices of claims being deleted leave the device plugins before the binder releases them."""

from __future__ import annotations

from nodeagent.deviceplugin import model
from nodeagent.reconcile.cycle import withdraw_pci

A = model.PciDevice("0000:01:00.0", 1)
B = model.PciDevice("0000:01:00.1", 1)
USB = model.UsbDevice(1, 2)


def test_withdrawing_a_device_keeps_the_rest_of_its_pool_and_other_resources() -> None:
    before = (model.PciResource("nvidia.com/GPU", (A, B)), model.UsbResource("kubevirt.io/n1-0627-0001-001002", USB))
    after = withdraw_pci(before, {A.address})
    assert after == (model.PciResource("nvidia.com/GPU", (B,)), before[1])


def test_a_resource_left_without_devices_is_dropped() -> None:
    before = (model.PciResource("intel.com/n1-000001000", (A,)), model.PciResource("intel.com/n1-000001001", (B,)))
    assert withdraw_pci(before, {A.address}) == (before[1],)
