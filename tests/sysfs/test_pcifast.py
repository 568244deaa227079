"""The compiled PCI scan (nodeagent/sysfs/_pcifast.c) against the Python path, on trees with every odd case.

Both paths must produce the same functions and skip the same ones; the accelerator hands anything unusual back to
the Python path, so these trees are made of exactly those cases. Under CI the accelerator must be built (a skip
fails there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from nodeagent.sysfs import pci as pci_scan
from nodeagent.sysfs.pci import PCI_DEVICES
from tests.support.hooked_root import HookedRoot
from tests.support.sysfs_tree import SysfsTree


@pytest.fixture
def read_functions() -> pci_scan.ReadFunctions:
    if pci_scan.ACCELERATOR is None:
        pytest.skip("the C accelerator is not built (no compiler when the package was installed)")
    return pci_scan.ACCELERATOR


def _odd_tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:00.0", vendor="8086", device="2020", cls="060000", iommu_group=1, numa_node=0)
    tree.pci(
        "0000:00:01.0", vendor="8086", device="2030", cls="060400", header_type=0x81, secondary_bus=2,
        driver="pcieport", iommu_group=2,
    )
    tree.pci("0000:00:02.0", vendor="1180", device="0476", cls="060700", header_type=2, iommu_group=3)  # CardBus
    tree.pci(
        "0000:02:00.0", vendor="10de", device="20b0", cls="030200", driver="vfio-pci", iommu_group=2,
        parent="0000:00:01.0", numa_node=1, subsystem_vendor="10de", subsystem_device="134f", revision="a1",
    )
    tree.pci("0000:03:00.0", vendor="102b", device="0533", cls="030000", driver="mgag200", boot_vga=True)
    tree.pci("0000:03:00.1", vendor="1234", device="1111", cls="000100", boot_vga=False, reset_methods=None)
    tree.pci("0000:af:00.0", vendor="8086", device="1572", cls="020000", sriov_numvfs=4, driver="i40e")
    tree.pci("0000:af:02.0", vendor="8086", device="154c", cls="020000", physfn="0000:af:00.0", numa_node=None)
    tree.pci("10000:01:00.0", vendor="144d", device="a808", cls="010802", driver="nvme", config_size=256)
    short = tree.pci("0000:04:00.0", vendor="1af4", device="1041", cls="020000", revision="01")
    (short / "config").write_bytes(b"")  # unprivileged: the Python path reads the attribute files
    gone = tree.pci("0000:05:00.0", vendor="15b3", device="101d", cls="020000")
    (gone / "config").write_bytes(b"\xff" * 64)  # in D3cold: the same fallback
    garbage = tree.pci("0000:06:00.0", vendor="8086", device="10fb", cls="020000")
    (garbage / "numa_node").write_text("many\n")  # not a number: both paths skip it
    odd_driver = tree.pci("0000:07:00.0", vendor="8086", device="10fb", cls="020000")
    os.symlink(os.fsdecode(b"../../bus/pci/drivers/\xff\xfe"), odd_driver / "driver")  # a name that is not UTF-8
    return tree


def test_the_accelerator_and_the_python_path_read_the_same_functions(
    tmp_path: Path, read_functions: pci_scan.ReadFunctions, caplog: pytest.LogCaptureFixture
) -> None:
    root = _odd_tree(tmp_path).root()
    with caplog.at_level(logging.WARNING):
        python = pci_scan.scan_pci(root, accelerated=False)
        python_log = sorted(r.pci_address for r in caplog.records)  # type: ignore[attr-defined]
        caplog.clear()
        fast = pci_scan.scan_pci(root)
        fast_log = sorted(r.pci_address for r in caplog.records)  # type: ignore[attr-defined]
    assert fast == python
    assert python_log == fast_log == ["0000:06:00.0", "0000:07:00.0"]
    by_address = {fn.address: fn for fn in fast}
    assert by_address["0000:04:00.0"].vendor_id == "1af4"  # read from the attribute files
    assert by_address["0000:05:00.0"].device_id == "101d"
    assert by_address["0000:03:00.0"].boot_vga and not by_address["0000:03:00.1"].boot_vga
    assert by_address["0000:03:00.1"].reset_methods == ()
    assert by_address["0000:af:00.0"].sriov_numvfs == 4 and by_address["0000:af:02.0"].numa_node is None
    assert by_address["0000:00:02.0"].bridge and by_address["0000:00:02.0"].driver is None
    assert by_address["0000:02:00.0"].iommu_group == "2" and by_address["0000:02:00.0"].driver == "vfio-pci"


def test_the_accelerator_hands_back_what_it_cannot_read(tmp_path: Path, read_functions: pci_scan.ReadFunctions) -> None:
    tree = _odd_tree(tmp_path)
    with tree.root().open_dir(PCI_DEVICES) as bus:
        wanted = ["0000:02:00.0", "0000:04:00.0", "0000:05:00.0", "0000:07:00.0", "0000:99:00.0", "../../..", "x" * 40]
        raw = read_functions(bus.fileno(), wanted)
    assert raw[0] is not None
    assert raw[0][0][:4] == bytes.fromhex("de10b020")  # vendor 10de, device 20b0, little-endian
    assert raw[0][1:] == ("2", b"1\n", b"flr bus\n", None, None, "vfio-pci")
    assert raw[1:] == [None] * 6  # short config, all-ones config, non-UTF-8 link, absent, and names that are no address


def test_a_function_unplugged_between_listing_and_reading_is_skipped_by_the_accelerator(
    tmp_path: Path, read_functions: pci_scan.ReadFunctions, caplog: pytest.LogCaptureFixture
) -> None:
    tree = SysfsTree(tmp_path)
    for n in range(3):
        tree.pci(f"0000:00:0{n}.0")

    def unplug(listed: str) -> None:
        if listed == PCI_DEVICES and "0000:00:01.0" in tree._pci_paths:
            tree.remove_pci("0000:00:01.0")

    with caplog.at_level(logging.WARNING):
        found = pci_scan.scan_pci(HookedRoot(tree.base, after_list=unplug))
    assert [fn.address for fn in found] == ["0000:00:00.0", "0000:00:02.0"]
    assert [r.getMessage() for r in caplog.records] == ["skipping unreadable PCI function"]


def test_hosts_with_more_functions_than_one_batch_are_read_whole(
    tmp_path: Path, read_functions: pci_scan.ReadFunctions
) -> None:
    # The accelerator reads 256 functions per GIL release; odd ones on both sides of a boundary go back to Python.
    tree = SysfsTree(tmp_path)
    addresses = [f"0000:{n // 32:02x}:{n % 32:02x}.0" for n in range(600)]
    for n, address in enumerate(addresses):
        where = tree.pci(address, device=f"{n:04x}", driver="ixgbe" if n % 3 else None, iommu_group=n)
        if n in (255, 256, 511):
            (where / "config").write_bytes(b"")
    root = tree.root()
    with root.open_dir(PCI_DEVICES) as bus:
        raw = read_functions(bus.fileno(), addresses)
    assert [n for n, facts in enumerate(raw) if facts is None] == [255, 256, 511]
    fast = pci_scan.scan_pci(root)
    assert fast == pci_scan.scan_pci(root, accelerated=False)
    assert [fn.device_id for fn in fast] == [f"{n:04x}" for n in range(600)]
