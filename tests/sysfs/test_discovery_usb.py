from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from nodeagent import discovery
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs.usb import controller_of, scan_usb
from tests.support.hooked_root import HookedRoot
from tests.support.sysfs_tree import SysfsTree


@pytest.fixture(scope="module")
def db() -> NamesDatabases:
    return NamesDatabases.load()


def _tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:14.0", vendor="8086", device="a36d", cls="0c0330", driver="xhci_hcd", iommu_group=7)
    return tree


def test_usbdevice_objects_are_named_and_filled_as_upstream_does(tmp_path: Path, db: NamesDatabases) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller="0000:00:14.0", serial="60A44C413A8F",
             product_string="DataTraveler 3.0")
    [obj] = discovery.discover(tree.root(), db, "jacknode").usb_devices
    assert obj["apiVersion"] == "devices.harvesterhci.io/v1beta1" and obj["kind"] == "USBDevice"
    assert obj["metadata"] == {"name": "jacknode-0951-1666-001004", "labels": {"nodename": "jacknode"}}
    assert obj["status"] == {
        "vendorID": "0951",
        "productID": "1666",
        "nodeName": "jacknode",
        "resourceName": "kubevirt.io/jacknode-0951-1666-001004",
        "devicePath": "/dev/bus/usb/001/004",
        "description": "DataTraveler 100 G3/G4/SE9 G2/50 Kyson (Kingston Technology) [DataTraveler 3.0]",
        "pciAddress": "0000:00:14.0",
        "classType": "Mass Storage",
        "enabled": False,
        "busNum": 1,
        "devNum": 4,
        "portPath": "1-2",
        "serial": "60A44C413A8F",
    }


def test_two_devices_with_equal_ids_on_one_bus_are_two_objects(tmp_path: Path, db: NamesDatabases) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-1", vendor="0951", product="1666", devnum=2, controller="0000:00:14.0")
    tree.usb("1-3", vendor="0951", product="1666", devnum=3, controller="0000:00:14.0")
    objs = discovery.discover(tree.root(), db, "n").usb_devices
    assert [o["metadata"]["name"] for o in objs] == ["n-0951-1666-001002", "n-0951-1666-001003"]
    assert "serial" not in objs[0]["status"]


def test_root_hubs_and_interfaces_are_not_devices(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-1", vendor="046d", product="c52b", devnum=2, controller="0000:00:14.0", interfaces=("03", "03"))
    assert [d.port_path for d in scan_usb(tree.root())] == ["1-1"]


def test_devices_behind_hubs_keep_their_port_path_and_controller(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.pci("0000:00:1d.0", vendor="8086", device="8d26", cls="0c0320", driver="ehci-pci")
    tree.usb("2-1", vendor="8087", product="8002", devnum=2, controller="0000:00:1d.0", device_class="09",
             interfaces=("09",))
    tree.usb("2-1.3", vendor="0781", product="5581", devnum=3, controller="0000:00:1d.0")
    devices = {d.port_path: d for d in scan_usb(tree.root())}
    assert devices["2-1.3"].controller_address == "0000:00:1d.0"
    assert devices["2-1.3"].bus == 2 and devices["2-1.3"].devnum == 3


@pytest.mark.parametrize(
    ("device_class", "interfaces", "expected"),
    [("00", ("03",), "HID"), ("09", ("09",), "Hub"), ("e0", ("e0",), "Wireless Controller"), ("00", ("42",),
     "Unknown (0x42)")],
)
def test_class_type_reads_the_first_interface_when_the_device_class_is_zero(
    tmp_path: Path, db: NamesDatabases, device_class: str, interfaces: tuple[str, ...], expected: str
) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-1", vendor="046d", product="c52b", devnum=2, controller="0000:00:14.0", device_class=device_class,
             interfaces=interfaces)
    assert discovery.discover(tree.root(), db, "n").usb_devices[0]["status"]["classType"] == expected


def test_first_interface_of_another_configuration_or_without_number_zero_is_found(
    tmp_path: Path, db: NamesDatabases
) -> None:
    """The scan tries `<port>:<configuration>.0` first; devices whose interfaces are named otherwise fall back to
    the directory's first interface, so the class comes out the same either way."""
    tree = _tree(tmp_path)
    a = tree.usb("1-1", vendor="046d", product="c52b", devnum=2, controller="0000:00:14.0", interfaces=("08",))
    b = tree.usb("1-2", vendor="046d", product="c52b", devnum=3, controller="0000:00:14.0", interfaces=("08",))
    (a / "bConfigurationValue").write_text("2\n")  # active configuration 2: its interfaces are 1-1:2.N
    (a / "1-1:1.0").rename(a / "1-1:2.0")
    (a / "1-1:2.0/bInterfaceClass").write_text("03\n")
    (b / "1-2:1.0").rename(b / "1-2:1.1")  # no interface number 0
    (b / "1-2:1.1/bInterfaceClass").write_text("e0\n")
    classes = [o["status"]["classType"] for o in discovery.discover(tree.root(), db, "n").usb_devices]
    assert classes == ["HID", "Wireless Controller"]


def test_unknown_usb_ids_are_described_by_id(tmp_path: Path, db: NamesDatabases) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-1", vendor="f00d", product="0003", devnum=2, controller="0000:00:14.0")
    tree.usb("1-2", vendor="0951", product="fff0", devnum=3, controller="0000:00:14.0")
    descs = [o["status"]["description"] for o in discovery.discover(tree.root(), db, "n").usb_devices]
    assert descs == ["Unknown f00d:0003", "Unknown (Kingston Technology)"]


def test_controller_is_the_last_pci_address_before_the_root_hub() -> None:
    path = "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/usb3/3-1/3-1.2"
    assert controller_of(path) == "0000:02:00.0"
    assert controller_of("/sys/devices/platform/dummy_hcd.0/usb1/1-1") is None


def test_a_device_unplugged_mid_scan_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = _tree(tmp_path)
    tree.usb("1-1", vendor="0951", product="1666", devnum=2, controller="0000:00:14.0")
    gone = tree.usb("1-2", vendor="0951", product="1666", devnum=3, controller="0000:00:14.0")
    with caplog.at_level(logging.WARNING):
        # its directory is open when it goes
        devices = scan_usb(HookedRoot(tree.base, after_open=lambda n: shutil.rmtree(gone) if n == "1-2" else None))
    assert [d.port_path for d in devices] == ["1-1"]
    assert any(r.getMessage() == "skipping unreadable USB device" for r in caplog.records)
