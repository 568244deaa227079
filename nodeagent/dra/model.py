"""What the node publishes for DRA: one `PublishedDevice` per claimed, bound function (or USB device) whose claim
says `spec.offer: DRA`, with the attributes its ResourceSlice entry carries (policy.dra names them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import dra, names

Attribute = Mapping[str, Any]  # a DeviceAttribute: exactly one of {"string": ...}, {"int": ...}, {"bool": ...}


@dataclass(frozen=True)
class PublishedDevice:
    driver: str
    name: str  # the device's name in its node's pool, e.g. pci-0000-3b-00-0
    object_name: str  # the PCIDevice/USBDevice name (what `use` is granted on)
    owner: str
    resource_name: str  # the per-device resource name: the PCI_RESOURCE_/USB_RESOURCE_ variable KubeVirt reads
    attributes: Mapping[str, Attribute]
    address: str = ""  # PCI: the function's address
    iommu_group: int | None = None
    group_functions: tuple[str, ...] = ()  # PCI: every non-bridge function of its IOMMU group (itself included)
    vfio_cdev: str | None = None  # PCI: "vfio3" when the iommufd cdev exists
    usb: tuple[int, int] | None = None  # USB: bus, device number

    def entry(self) -> dict[str, Any]:
        """The device as a ResourceSlice lists it."""
        return {"name": self.name, "attributes": {k: dict(v) for k, v in sorted(self.attributes.items())}}


def _s(value: str) -> Attribute:
    return {"string": value}


def _i(value: int) -> Attribute:
    return {"int": value}


def build_pci(
    *,
    node: str,
    object_name: str,
    owner: str,
    address: str,
    vendor_id: str,
    device_id: str,
    class_id: str,
    iommu_group: int,
    numa_node: int | None,
    pcie_root: str | None,
    resource_name: str,
    group_functions: tuple[str, ...] = (),
    vfio_cdev: str | None = None,
) -> PublishedDevice:
    names.pci_address(address)
    attributes: dict[str, Attribute] = {
        dra.ATTR_OWNER: _s(owner),
        dra.ATTR_NODE: _s(node),
        dra.ATTR_PCI_DEVICE: _s(object_name),
        dra.ATTR_PCI_ADDRESS: _s(address),
        dra.ATTR_VENDOR_ID: _s(vendor_id),
        dra.ATTR_DEVICE_ID: _s(device_id),
        dra.ATTR_CLASS_ID: _s(class_id),
        dra.ATTR_IOMMU_GROUP: _i(iommu_group),
        dra.ATTR_NUMA_NODE: _i(numa_node if numa_node is not None and numa_node >= 0 else -1),
        dra.ATTR_PCI_BUS_ID: _s(address),
    }
    if pcie_root:
        attributes[dra.ATTR_PCIE_ROOT] = _s(pcie_root)
    return PublishedDevice(
        driver=dra.PCI_DRIVER,
        name=dra.pci_device_name(address),
        object_name=object_name,
        owner=owner,
        resource_name=resource_name,
        attributes=attributes,
        address=address,
        iommu_group=iommu_group,
        group_functions=group_functions or (address,),
        vfio_cdev=vfio_cdev,
    )


def build_usb(
    *,
    node: str,
    object_name: str,
    owner: str,
    vendor_id: str,
    product_id: str,
    bus: int,
    devnum: int,
    controller: str,
    resource_name: str,
) -> PublishedDevice:
    attributes: dict[str, Attribute] = {
        dra.ATTR_OWNER: _s(owner),
        dra.ATTR_NODE: _s(node),
        dra.ATTR_USB_DEVICE: _s(object_name),
        dra.ATTR_VENDOR_ID: _s(vendor_id),
        dra.ATTR_PRODUCT_ID: _s(product_id),
        dra.ATTR_BUS: _i(bus),
        dra.ATTR_DEVNUM: _i(devnum),
    }
    if controller:
        attributes[dra.ATTR_CONTROLLER] = _s(controller)
    return PublishedDevice(
        driver=dra.USB_DRIVER,
        name=dra.usb_device_name(bus, devnum),
        object_name=object_name,
        owner=owner,
        resource_name=resource_name,
        attributes=attributes,
        usb=(bus, devnum),
    )
