from __future__ import annotations

import pytest

from policy import names

# Every row of docs/upstream.md's resourceName table.
UPSTREAM_TABLE = [
    ("Intel Corporation", "Ethernet Connection (11) I219-LM", "0d4c", "intel.com/ETHERNET_CONNECTION_11_I219LM"),
    ("NVIDIA Corporation", "GA100 [A100 SXM4 40GB]", "20b0", "nvidia.com/GA100_A100_SXM4_40GB"),
    ("NVIDIA Corporation", "GA104 [RTX A4500 Embedded GPU ]", "24ba", "nvidia.com/GA104_RTX_A4500_EMBEDDED_GPU"),
    (
        "Advanced Micro Devices, Inc. [AMD/ATI]",
        "R481 [Radeon X850 XT AGP]",
        "4b4b",
        "amd.com/R481_RADEON_X850_XT_AGP",
    ),
    (
        "Mellanox Technologies",
        "MT2892 Family [ConnectX-6 Dx Flash Recovery]",
        "a2d6",
        "mellanox.com/MT2892_FAMILY_CONNECTX6_DX_FLASH_RECOVERY",
    ),
    ("Test Vendor", None, "5678", "test.com/5678"),
]


@pytest.mark.parametrize(("vendor", "device", "device_id", "expected"), UPSTREAM_TABLE)
def test_pooled_resource_name_follows_upstream_table(
    vendor: str, device: str | None, device_id: str, expected: str
) -> None:
    assert names.pci_resource_name(vendor, device, device_id) == expected


def test_product_that_sanitises_to_nothing_becomes_the_device_id() -> None:
    assert names.pci_resource_name("Intel Corporation", " [()] -- ", "abcd") == "intel.com/abcd"


def test_unknown_vendor_gives_unknown_vendor_part() -> None:
    assert names.pci_resource_name(None, None, "1234") == "unknown.com/1234"
    assert names.vendor_part("!!!") == "unknown.com"


def test_long_names_replace_virtual_function_by_vf() -> None:
    device = "Ethernet Adaptive Virtual Function For Some Series Abc"
    long_vendor = "Intel Corporation"
    plain = names.product_part(device, "1889")
    assert len(names.vendor_part(long_vendor)) + len(plain) > names.RESOURCE_NAME_BUDGET
    result = names.pci_resource_name(long_vendor, device, "1889")
    assert result == "intel.com/ETHERNET_ADAPTIVE_VF_FOR_SOME_SERIES_ABC"
    assert len(result) - 1 <= names.RESOURCE_NAME_BUDGET


def test_names_still_too_long_fall_back_to_the_device_id() -> None:
    device = "An Extraordinarily Long Product Name That Goes On And On And On Forever"
    assert names.pci_resource_name("Intel Corporation", device, "15b8") == "intel.com/15b8"


def test_per_device_resource_name_uses_the_pcidevice_name() -> None:
    assert names.pci_device_resource_name("NVIDIA Corporation", "node1", "0000:01:00.0") == (
        "nvidia.com/node1-000001000"
    )


def test_long_node_names_are_shortened_deterministically_to_63_characters() -> None:
    node = "n" * 70
    one = names.pci_device_resource_name("NVIDIA Corporation", node, "0000:01:00.0")
    two = names.pci_device_resource_name("NVIDIA Corporation", node, "0000:01:00.0")
    other = names.pci_device_resource_name("NVIDIA Corporation", node, "0000:01:00.1")
    assert one == two
    assert one != other
    vendor, part = one.split("/")
    assert vendor == "nvidia.com" and len(part) == 63
    usb = names.usb_resource_name(names.usbdevice_name(node, "0951", "1666", 2, 4))
    assert usb.startswith("kubevirt.io/") and len(usb.split("/")[1]) == 63


def test_short_name_parts_are_kept() -> None:
    assert names.shorten_name_part("node1-000001000") == "node1-000001000"
    assert names.usb_resource_name("jacknode-0951-1666-002004") == "kubevirt.io/jacknode-0951-1666-002004"


def test_env_var_names_follow_kubevirt() -> None:
    assert names.pci_resource_env_var("intel.com/ETHERNET_CONNECTION_11_I219LM") == (
        "PCI_RESOURCE_INTEL_COM_ETHERNET_CONNECTION_11_I219LM"
    )
    env = names.usb_resource_env_var("kubevirt.io/n1-0951-1666-002004")
    assert env == "USB_RESOURCE_KUBEVIRT_IO_N1-0951-1666-002004"


def test_pci_description_joins_the_three_lspci_names() -> None:
    assert names.pci_description("Ethernet controller", "Intel Corporation", "I350 Gigabit Network Connection") == (
        "Ethernet controller: Intel Corporation I350 Gigabit Network Connection"
    )


@pytest.mark.parametrize(
    ("vendor", "product", "sysfs", "expected"),
    [
        ("Kingston Technology", "DataTraveler 100 G3", None, "DataTraveler 100 G3 (Kingston Technology)"),
        ("Kingston Technology", None, None, "Unknown (Kingston Technology)"),
        (None, None, None, "Unknown 0951:1666"),
        (None, None, "Stick", "Unknown 0951:1666 [Stick]"),
        ("Kingston Technology", "DT", "DataTraveler", "DT (Kingston Technology) [DataTraveler]"),
    ],
)
def test_usb_description_follows_upstream(
    vendor: str | None, product: str | None, sysfs: str | None, expected: str
) -> None:
    assert names.usb_description("0951", "1666", vendor, product, sysfs) == expected


@pytest.mark.parametrize(
    ("device_class", "interface_class", "expected"),
    [
        (0x09, None, "Hub"),
        (0x00, 0x08, "Mass Storage"),
        (0x00, 0x03, "HID"),
        (0xEF, None, "Miscellaneous"),
        (0x42, None, "Unknown (0x42)"),
        (0x00, None, "Unknown (0x00)"),
    ],
)
def test_usb_class_type_reads_the_first_interface_for_class_zero(
    device_class: int, interface_class: int | None, expected: str
) -> None:
    assert names.usb_class_type(device_class, interface_class) == expected


@pytest.mark.parametrize("address", ["0000:00:1f.6", "10000:e1:00.0", "ffffffff:ff:1f.7"])
def test_addresses_with_4_to_8_digit_domains_are_valid(address: str) -> None:
    assert names.pci_address(address) == address


@pytest.mark.parametrize("address", ["000:00:1f.6", "0000:00:1f.8", "0000:00:1F.6", "../0000:00:1f.6", 7])
def test_malformed_addresses_are_refused(address: object) -> None:
    with pytest.raises(names.InvalidName):
        names.pci_address(address)


def test_vmd_domain_device_names() -> None:
    assert names.pcidevice_name("titan", "10000:e1:00.0") == "titan-10000e1000"
