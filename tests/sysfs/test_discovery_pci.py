from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from nodeagent import discovery
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs import pci as pci_scan
from nodeagent.sysfs.pci import PCI_DEVICES
from tests.support.hooked_root import HookedRoot
from tests.support.sysfs_tree import SysfsTree


@pytest.fixture(scope="module")
def db() -> NamesDatabases:
    return NamesDatabases.load()


@pytest.fixture(autouse=True, params=["accelerated", "python"])
def scan_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through the C accelerator and through the Python path alone."""
    if request.param == "python":
        monkeypatch.setattr(pci_scan, "ACCELERATOR", None)
    elif pci_scan.ACCELERATOR is None:
        pytest.skip("the C accelerator is not built (no compiler when the package was installed)")
    return str(request.param)


def _by_address(inv: discovery.Inventory) -> dict[str, discovery.PCIDevice]:
    return {o["status"]["address"]: o for o in inv.pci_devices}


def _gpu_tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:00.0", vendor="8086", device="2f00", cls="060000", iommu_group=1, numa_node=0)
    tree.pci(
        "0000:00:01.0", vendor="8086", device="2f02", cls="060400", header_type=0x81, secondary_bus=0x3B,
        driver="pcieport", iommu_group=45,
    )
    tree.pci(
        "0000:3b:00.0", vendor="10de", device="20b0", cls="030200", driver="nvidia", iommu_group=45,
        parent="0000:00:01.0", numa_node=1, subsystem_vendor="10de", subsystem_device="134f", revision="a1",
        reset_methods=("flr", "bus"),
    )
    tree.pci("0000:3b:00.1", vendor="10de", device="1aef", cls="040300", iommu_group=45, parent="0000:00:01.0")
    return tree


def test_pcidevice_objects_are_named_and_filled_as_upstream_does(tmp_path: Path, db: NamesDatabases) -> None:
    inv = discovery.discover(_gpu_tree(tmp_path).root(), db, "node1")
    gpu = _by_address(inv)["0000:3b:00.0"]
    assert gpu["apiVersion"] == "devices.harvesterhci.io/v1beta1"
    assert gpu["kind"] == "PCIDevice"
    assert gpu["metadata"] == {"name": "node1-00003b000", "labels": {"nodename": "node1"}}
    status = gpu["status"]
    assert status["vendorId"] == "10de" and status["deviceId"] == "20b0" and status["classId"] == "0302"
    assert status["iommuGroup"] == "45"
    assert status["nodeName"] == "node1"
    assert status["resourceName"] == "nvidia.com/GA100_A100_SXM4_40GB"
    assert status["description"] == "3D controller: NVIDIA Corporation GA100 [A100 SXM4 40GB]"
    assert status["kernelDriverInUse"] == "nvidia"
    assert status["subsystemVendorId"] == "10de" and status["subsystemDeviceId"] == "134f"
    assert status["revision"] == "a1"
    assert status["numaNode"] == 1
    assert status["resetMethods"] == ["flr", "bus"]
    assert status["hostCritical"] is False and status["hostCriticalReasons"] == []


def test_functions_of_one_model_keep_their_own_revision_subsystem_and_state(
    tmp_path: Path, db: NamesDatabases
) -> None:
    # Naming is shared per model within a scan; nothing that differs between two functions may leak across.
    tree = SysfsTree(tmp_path)
    tree.pci("0000:3b:00.0", vendor="10de", device="20b0", cls="030200", driver="nvidia", iommu_group=45,
             numa_node=0, subsystem_vendor="10de", subsystem_device="134f", revision="a1", reset_methods=("flr",))
    tree.pci("0000:5e:00.0", vendor="10de", device="20b0", cls="030200", iommu_group=46,
             numa_node=1, subsystem_vendor="10de", subsystem_device="1463", revision="a2", reset_methods=("bus",))
    objs = _by_address(discovery.discover(tree.root(), db, "node1"))
    first, second = objs["0000:3b:00.0"]["status"], objs["0000:5e:00.0"]["status"]
    assert first["resourceName"] == second["resourceName"] == "nvidia.com/GA100_A100_SXM4_40GB"
    assert (first["subsystemDeviceId"], first["revision"]) == ("134f", "a1")
    assert (second["subsystemDeviceId"], second["revision"]) == ("1463", "a2")
    assert (first["kernelDriverInUse"], second["kernelDriverInUse"]) == ("nvidia", "")
    assert (first["iommuGroup"], second["iommuGroup"]) == ("45", "46")
    assert (first["numaNode"], second["numaNode"]) == (0, 1)
    assert (first["resetMethods"], second["resetMethods"]) == (["flr"], ["bus"])
    assert list(first) == list(second)  # the same field order for every object
    assert list(first)[:3] == ["address", "vendorId", "deviceId"]


def test_boot_vga_is_read_for_vga_compatible_classes_only(tmp_path: Path) -> None:
    # The kernel gives boot_vga to class 0300 and to pre-2.0 "VGA, not defined" (0001) functions, nothing else.
    tree = SysfsTree(tmp_path)
    tree.pci("0000:01:00.0", vendor="102b", device="0533", cls="030000", boot_vga=True)
    tree.pci("0000:02:00.0", vendor="1234", device="1111", cls="000100", boot_vga=True)
    tree.pci("0000:03:00.0", vendor="1234", device="2222", cls="000100", boot_vga=False)
    tree.pci("0000:3b:00.0", vendor="10de", device="20b0", cls="030200")
    found = {fn.address: fn.boot_vga for fn in pci_scan.scan_pci(tree.root())}
    assert found == {"0000:01:00.0": True, "0000:02:00.0": True, "0000:03:00.0": False, "0000:3b:00.0": False}


def test_bridges_are_not_listed_but_are_members_of_their_iommu_group(tmp_path: Path, db: NamesDatabases) -> None:
    inv = discovery.discover(_gpu_tree(tmp_path).root(), db, "node1")
    listed = _by_address(inv)
    assert "0000:00:01.0" not in listed
    assert "0000:00:00.0" in listed  # a host bridge (class 0600, header type 0) is an ordinary function
    assert listed["0000:3b:00.1"]["status"]["iommuGroupMembers"] == [
        {"address": "0000:00:01.0", "bridge": True},
        {"address": "0000:3b:00.0", "bridge": False},
        {"address": "0000:3b:00.1", "bridge": False},
    ]


def test_unknown_ids_fall_back_like_lspci(tmp_path: Path, db: NamesDatabases) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:07.0", vendor="0002", device="1234", cls="020000")
    tree.pci("0000:00:08.0", vendor="8086", device="ffff", cls="027700")
    tree.pci("0000:00:09.0", vendor="8086", device="10fb", cls="fe0100")
    found = _by_address(discovery.discover(tree.root(), db, "n"))
    assert found["0000:00:07.0"]["status"]["description"] == "Ethernet controller: Vendor 0002 Device 1234"
    assert found["0000:00:07.0"]["status"]["resourceName"] == "unknown.com/1234"
    assert found["0000:00:08.0"]["status"]["description"] == "Network controller [0277]: Intel Corporation Device ffff"
    assert found["0000:00:08.0"]["status"]["resourceName"] == "intel.com/ffff"
    assert found["0000:00:09.0"]["status"]["description"].startswith("Class fe01: Intel Corporation 82599")


def test_functions_without_driver_iommu_or_numa_have_empty_fields(tmp_path: Path, db: NamesDatabases) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:02.0", numa_node=-1, reset_methods=None)
    status = discovery.discover(tree.root(), db, "n").pci_devices[0]["status"]
    assert status["kernelDriverInUse"] == ""
    assert status["iommuGroup"] == "" and status["iommuGroupMembers"] == []
    assert "numaNode" not in status
    assert status["resetMethods"] == []


def test_vmd_domains_are_discovered(tmp_path: Path, db: NamesDatabases) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("10000:e1:00.0", vendor="8086", device="0a54", cls="010802", driver="nvme", iommu_group=3)
    obj = discovery.discover(tree.root(), db, "titan").pci_devices[0]
    assert obj["metadata"]["name"] == "titan-10000e1000"
    assert obj["status"]["address"] == "10000:e1:00.0"


def test_short_config_space_falls_back_to_attribute_files(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    where = tree.pci("0000:00:03.0", vendor="1af4", device="1041", cls="020000", revision="01",
                     subsystem_vendor="1af4", subsystem_device="1100")
    (where / "config").write_bytes(b"")
    fn = pci_scan.scan_pci(tree.root())[0]
    assert (fn.vendor_id, fn.device_id, fn.class_code, fn.revision) == ("1af4", "1041", "020000", "01")
    assert (fn.subsystem_vendor_id, fn.subsystem_device_id) == ("1af4", "1100")


def test_a_bridge_without_readable_config_is_still_recognised(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    where = tree.pci("0000:00:01.0", vendor="8086", device="2f02", cls="060400", header_type=1, secondary_bus=2)
    (where / "config").unlink()
    (where / "subordinate_bus_number").write_text("2\n")
    tree.pci("0000:00:02.0", vendor="8086", device="2f04", cls="060400")
    (tree.pci_path("0000:00:02.0") / "config").unlink()
    bridges = {f.address: f.bridge for f in pci_scan.scan_pci(tree.root())}
    assert bridges == {"0000:00:01.0": True, "0000:00:02.0": False}


def test_256_byte_config_space_is_decoded_like_64(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:03.0", vendor="15b3", device="101d", cls="020000", config_size=256,
             subsystem_vendor="15b3", subsystem_device="0016")
    fn = pci_scan.scan_pci(tree.root())[0]
    assert (fn.vendor_id, fn.device_id, fn.subsystem_device_id, fn.bridge) == ("15b3", "101d", "0016", False)


def test_a_function_that_vanishes_mid_scan_is_skipped_and_logged(
    tmp_path: Path, db: NamesDatabases, caplog: pytest.LogCaptureFixture
) -> None:
    tree = SysfsTree(tmp_path)
    for n in range(3):
        tree.pci(f"0000:00:0{n}.0")

    def unplug(listed: str) -> None:  # listed with the others, gone before the scan reads it
        if listed == PCI_DEVICES and "0000:00:01.0" in tree._pci_paths:
            tree.remove_pci("0000:00:01.0")

    with caplog.at_level(logging.WARNING):
        inv = discovery.discover(HookedRoot(tree.base, after_list=unplug), db, "n")
    assert [o["status"]["address"] for o in inv.pci_devices] == ["0000:00:00.0", "0000:00:02.0"]
    assert any(r.getMessage() == "skipping unreadable PCI function" for r in caplog.records)


def test_descriptions_and_ids_agree_with_lspci_on_a_synthetic_tree(tmp_path: Path, db: NamesDatabases) -> None:
    if shutil.which("lspci") is None:
        pytest.skip("lspci (Debian pciutils) is not installed; scripts/setup installs it")
    tree = _gpu_tree(tmp_path)
    tree.pci("0000:00:07.0", vendor="0002", device="1234", cls="020000")
    tree.pci("0000:00:08.0", vendor="8086", device="ffff", cls="027700", driver="e1000e")
    tree.pci("10000:e1:00.0", vendor="8086", device="0a54", cls="010802", driver="nvme")
    out = subprocess.run(
        ["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={tree.sys}/bus/pci", "-vmm", "-Dk"],
        check=True, capture_output=True, text=True,
    ).stdout
    records = [dict(line.split(":\t", 1) for line in block.splitlines()) for block in out.strip().split("\n\n")]
    ours = _by_address(discovery.discover(tree.root(), db, "n"))
    expected = {r["Slot"]: r for r in records if r["Slot"] != "0000:00:01.0"}
    assert set(ours) == set(expected)
    for address, rec in expected.items():
        status = ours[address]["status"]
        assert status["description"] == f"{rec['Class']}: {rec['Vendor']} {rec['Device']}", address
        assert status["kernelDriverInUse"] == rec.get("Driver", ""), address


def test_odd_product_names_from_a_given_names_database(tmp_path: Path) -> None:
    # Upstream keeps only alphanumerics of the first word: "Amazon.com," becomes amazoncom.com.
    ids = tmp_path / "pci.ids"
    ids.write_text(
        "1d0f  Amazon.com, Inc.\n"
        "\t0001  [()]\n"
        "\t0002  Elastic Network Adapter Virtual Function With An Extremely Long Marketing Name\n"
        "\t0003  Elastic Network Adapter Virtual Function Abcdefghij Klmno\n"
        "C 02  Network controller\n\t00  Ethernet controller\n"
    )
    tree = SysfsTree(tmp_path / "host")
    for n in (1, 2, 3):
        tree.pci(f"0000:00:0{n}.0", vendor="1d0f", device=f"000{n}", cls="020000")
    db = NamesDatabases.load(pci_ids=str(ids), usb_ids=str(ids))
    found = _by_address(discovery.discover(tree.root(), db, "n"))
    assert found["0000:00:01.0"]["status"]["resourceName"] == "amazoncom.com/0001"
    assert found["0000:00:01.0"]["status"]["description"] == "Ethernet controller: Amazon.com, Inc. [()]"
    assert found["0000:00:02.0"]["status"]["resourceName"] == "amazoncom.com/0002"
    vf = "amazoncom.com/ELASTIC_NETWORK_ADAPTER_VF_ABCDEFGHIJ_KLMNO"
    assert found["0000:00:03.0"]["status"]["resourceName"] == vf
