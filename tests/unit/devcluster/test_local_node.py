"""The local run's agent for this machine is discovery-only by construction: its sysfs root refuses every write, and
module loads and ownership changes raise, whatever claim reaches it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from devcluster import nodes
from nodeagent.errors import SysfsError
from tests.support.sysfs_tree import SysfsTree

ADDRESS = "0000:00:04.0"


def test_the_local_node_root_reads_like_any_root_but_refuses_every_write(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    where = tree.pci(ADDRESS, driver="ixgbe", iommu_group=1)
    (where / "driver_override").write_text("(null)\n")
    root = nodes.ReadOnlyRoot(str(tmp_path))
    attr = f"/sys/bus/pci/devices/{ADDRESS}/driver_override"
    assert root.read_attr(attr) == "(null)"
    for path, value in ((attr, "vfio-pci"), (f"/sys/bus/pci/devices/{ADDRESS}/driver/unbind", ADDRESS),
                        ("/sys/bus/pci/drivers_probe", ADDRESS)):  # fmt: skip
        with pytest.raises(SysfsError) as refused:
            root.write_attr(path, value)
        assert refused.value.errno == errno.EPERM
    assert (where / "driver_override").read_text() == "(null)\n"


def test_the_local_node_refuses_module_loads_and_ownership_changes(tmp_path: Path) -> None:
    target = tmp_path / "bus-usb-001-003"
    target.write_text("")
    with pytest.raises(SysfsError):
        nodes._refuse_modules(["vfio-pci"])
    with pytest.raises(SysfsError):
        nodes._refuse_chown(str(target), 107, 107)
