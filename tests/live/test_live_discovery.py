"""Read-only discovery of the machine the tests run on, compared with lspci and lsusb on the same machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from nodeagent import discovery
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs.root import SysfsRoot
from policy import names
from tests.support import reference


@pytest.fixture(scope="module")
def live() -> discovery.Inventory:
    if not os.path.isdir("/sys/bus/pci/devices"):
        pytest.skip("this machine has no /sys/bus/pci")
    return discovery.discover(SysfsRoot("/"), NamesDatabases.load(), socket.gethostname())


def _lspci(*flags: str) -> dict[str, dict[str, str]]:
    if shutil.which("lspci") is None:
        pytest.skip("lspci (Debian pciutils) is not installed; scripts/setup installs it")
    return reference.parse_vmm(reference.run(["lspci", "-vmm", "-D", *flags]))


def _non_bridges() -> set[str]:
    headers = reference.parse_header_types(reference.run(["lspci", "-D", "-x"]))
    return {a for a, h in headers.items() if h & 0x7F not in (1, 2)}


def test_live_discovery_lists_what_lspci_lists_except_bridges(live: discovery.Inventory) -> None:
    _lspci("-n")
    ours = {o["status"]["address"] for o in live.pci_devices}
    assert ours == _non_bridges()


def test_live_ids_class_driver_and_descriptions_agree_with_lspci(live: discovery.Inventory) -> None:
    numeric, named = _lspci("-nk"), _lspci("-k")
    for obj in live.pci_devices:
        s = obj["status"]
        a = s["address"]
        num, nam = numeric[a], named[a]
        assert (s["vendorId"], s["deviceId"], s["classId"]) == (num["Vendor"], num["Device"], num["Class"]), a
        assert s["revision"] == num.get("Rev", "00"), a
        assert (s["subsystemVendorId"], s["subsystemDeviceId"]) == (num.get("SVendor", "0000"),
                                                                    num.get("SDevice", "0000")), a
        assert s["kernelDriverInUse"] == num.get("Driver", ""), a
        assert s["description"] == f"{nam['Class']}: {nam['Vendor']} {nam['Device']}", a


def test_live_usb_devices_agree_with_lsusb(live: discovery.Inventory) -> None:
    if shutil.which("lsusb") is None:
        pytest.skip("lsusb (Debian usbutils) is not installed; scripts/setup installs it")
    try:
        text = reference.run(["lsusb"])
    except subprocess.CalledProcessError:  # lsusb exits non-zero on machines without any USB bus
        text = ""
    expected = sorted(
        (d["bus"], d["devnum"], d["vendor"], d["product"]) for d in reference.parse_lsusb(text) if d["devnum"] != 1
    )
    got = sorted(
        (o["status"]["busNum"], o["status"]["devNum"], o["status"]["vendorID"], o["status"]["productID"])
        for o in live.usb_devices
    )
    assert got == expected


def _on_pci(link: str, depth: int = 0) -> bool:
    """Whether a block device (a /sys/dev/block or slaves/ link) sits on a PCI function, following dm/md slaves."""
    real = os.path.realpath(link)
    if any(names.is_pci_address(part) for part in real.split("/")):
        return True
    slaves = os.path.join(real, "slaves")
    return depth < 8 and os.path.isdir(slaves) and any(
        _on_pci(os.path.join(slaves, s), depth + 1) for s in os.listdir(slaves)
    )


def test_live_root_filesystem_is_traced_exactly_when_it_is_on_a_pci_block_device(live: discovery.Inventory) -> None:
    with open("/proc/self/mountinfo") as f:
        root_majmin = [line.split()[2] for line in f if line.split()[4] == "/"][-1]
    link = f"/sys/dev/block/{root_majmin}"
    on_pci = os.path.exists(link) and _on_pci(link)
    assert live.critical.root_traced == on_pci
    holds_root = any(r.startswith("holds / via ") for rs in live.critical.reasons.values() for r in rs)
    assert holds_root == on_pci
