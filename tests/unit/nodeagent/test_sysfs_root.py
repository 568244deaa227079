from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.errors import RootUnavailable, SysfsError
from nodeagent.sysfs.root import SysfsRoot


def _tree(tmp_path: Path) -> SysfsRoot:
    dev = tmp_path / "sys/devices/pci0000:00/0000:00:1f.6"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x8086\n")
    drv = tmp_path / "sys/bus/pci/drivers/e1000e"
    drv.mkdir(parents=True)
    (dev / "driver").symlink_to("../../../bus/pci/drivers/e1000e")
    devices = tmp_path / "sys/bus/pci/devices"
    devices.mkdir(parents=True)
    (devices / "0000:00:1f.6").symlink_to("../../../devices/pci0000:00/0000:00:1f.6")
    return SysfsRoot(tmp_path)


def test_host_paths_are_read_under_the_prefix(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert root.read_attr("/sys/bus/pci/devices/0000:00:1f.6/vendor") == "0x8086"
    assert root.children(root.sys("bus", "pci", "devices")) == ["0000:00:1f.6"]
    assert root.try_link_name("/sys/bus/pci/devices/0000:00:1f.6/driver") == "e1000e"
    assert root.resolve("/sys/bus/pci/devices/0000:00:1f.6") == "/sys/devices/pci0000:00/0000:00:1f.6"


def test_missing_files_read_as_none_or_empty(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert root.try_read_attr("/sys/bus/pci/devices/0000:00:1f.6/numa_node") is None
    assert root.try_link_name("/sys/bus/pci/devices/0000:00:1f.6/iommu_group") is None
    assert root.children("/sys/bus/usb/devices") == []
    with pytest.raises(SysfsError) as e:
        root.read_attr("/sys/bus/pci/devices/0000:00:1f.6/numa_node")
    assert e.value.path.endswith("numa_node")


def test_paths_with_dotdot_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(SysfsError):
        root.read_attr("/sys/bus/pci/devices/../../../etc/passwd")


def test_proc_can_live_elsewhere(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    hostproc = tmp_path / "hostproc"
    hostproc.mkdir()
    (hostproc / "swaps").write_text("Filename Type Size Used Priority\n")
    moved = SysfsRoot(tmp_path, proc=hostproc)
    assert moved.read_attr("/proc/swaps").startswith("Filename")
    assert moved.read_attr("/sys/bus/pci/devices/0000:00:1f.6/vendor") == "0x8086"
    assert root.try_read_attr("/proc/swaps") is None


def test_write_attr_writes_existing_files_only(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    target = tmp_path / "sys/devices/pci0000:00/0000:00:1f.6/driver_override"
    target.write_text("\n")
    root.write_attr("/sys/bus/pci/devices/0000:00:1f.6/driver_override", "vfio-pci")
    assert target.read_text().startswith("vfio-pci")
    with pytest.raises(SysfsError):
        root.write_attr("/sys/bus/pci/devices/0000:00:1f.6/new_file", "x")
    assert not (tmp_path / "sys/devices/pci0000:00/0000:00:1f.6/new_file").exists()


def test_check_rejects_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RootUnavailable):
        SysfsRoot(tmp_path / "absent").check()
    SysfsRoot(tmp_path).check()


def test_the_live_root_maps_paths_unchanged() -> None:
    root = SysfsRoot("/")
    assert root.real("/sys/bus/pci") == "/sys/bus/pci"
    assert root.host("/sys/bus/pci") == "/sys/bus/pci"
    assert root.prefix == os.sep


def test_read_entries_reads_files_and_link_names_of_one_directory(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files, links = root.read_entries(
        "/sys/bus/pci/devices/0000:00:1f.6", [("vendor", 64), ("numa_node", 8)], ["driver", "iommu_group"]
    )
    assert files == [b"0x8086\n", None]
    assert links == ["e1000e", None]
    with pytest.raises(SysfsError):
        root.read_entries("/sys/bus/pci/devices/0000:00:1f.7", [("vendor", 64)], [])


def test_open_dir_reads_relative_to_one_directory(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with root.open_dir("/sys/bus/pci/devices/0000:00:1f.6") as d:
        assert d.read("vendor") == b"0x8086\n"
        assert d.read("absent") is None
        assert d.link_name("driver") == "e1000e"
        assert d.link_name("vendor") is None
