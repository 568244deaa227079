"""The node-side takeover (`pcidevices-agent takeover`): which vfio-pci dynamic ids are removed, on a synthetic tree."""

from __future__ import annotations

import io
from pathlib import Path

from nodeagent.__main__ import main
from nodeagent.host import dynids
from tests.support.sysfs_tree import SysfsTree

UPSTREAM_A = "0000:01:00.0"  # claimed, bound by new_id (no driver_override)
UPSTREAM_B = "0000:02:00.0"  # same ids, claimed, bound by new_id
OURS = "0000:03:00.0"  # claimed, bound per device with driver_override
ADMINS = "0000:04:00.0"  # unclaimed, bound by an admin's own new_id
MIXED_CLAIMED = "0000:05:00.0"
MIXED_UNCLAIMED = "0000:06:00.0"  # same ids as MIXED_CLAIMED, not claimed


def _tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path / "host")
    for address, vendor, device in (
        (UPSTREAM_A, "8086", "10d3"),
        (UPSTREAM_B, "8086", "10d3"),
        (OURS, "10de", "1eb8"),
        (ADMINS, "1af4", "1041"),
        (MIXED_CLAIMED, "15b3", "1017"),
        (MIXED_UNCLAIMED, "15b3", "1017"),
    ):
        path = tree.pci(address, vendor=vendor, device=device, driver="vfio-pci", iommu_group=int(address[5:7], 16))
        (path / "driver_override").write_text("vfio-pci\n" if address == OURS else "(null)\n")
    tree.pci("0000:07:00.0", vendor="8086", device="10d3", driver="e1000e")  # same ids, its own driver
    (tree.sys / "bus/pci/drivers/vfio-pci/remove_id").write_text("")
    return tree


CLAIMED = {UPSTREAM_A, UPSTREAM_B, OURS, MIXED_CLAIMED}


def test_only_ids_whose_id_bound_devices_are_all_claimed_are_removed(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    bindings = dynids.scan(tree.root())
    assert {b.address for b in bindings} == {UPSTREAM_A, UPSTREAM_B, ADMINS, MIXED_CLAIMED, MIXED_UNCLAIMED}
    p = dynids.plan(bindings, CLAIMED)
    assert p.remove == (("8086", "10d3"),)
    assert [(v, d) for v, d, _ in p.skipped] == [("15b3", "1017")]
    assert MIXED_UNCLAIMED in p.skipped[0][2]


def test_the_agent_step_writes_remove_id_and_leaves_devices_bound(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    args = ["takeover", "--root", str(tree.base), "--node-name", "n1"]
    rc = main([*args, *(f"--claimed={a}" for a in sorted(CLAIMED))], out=out, err=err)
    assert rc == 0, err.getvalue()
    assert (tree.sys / "bus/pci/drivers/vfio-pci/remove_id").read_text() == "8086 10d3"
    assert "remove_id 8086 10d3: removed" in out.getvalue()
    assert "kept 15b3 1017" in out.getvalue()
    for address in (UPSTREAM_A, UPSTREAM_B):
        assert (tree.pci_path(address) / "driver").resolve().name == "vfio-pci"


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    out = io.StringIO()
    claimed = [f"--claimed={a}" for a in sorted(CLAIMED)]
    rc = main(["takeover", "--root", str(tree.base), "--dry-run", *claimed], out=out, err=io.StringIO())
    assert rc == 0
    assert (tree.sys / "bus/pci/drivers/vfio-pci/remove_id").read_text() == ""
    assert "would remove_id 8086 10d3" in out.getvalue()


def test_a_claimed_address_that_is_not_a_pci_address_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    err = io.StringIO()
    rc = main(["takeover", "--root", str(tree.base), "--claimed", "../../x"], out=io.StringIO(), err=err)
    assert rc == 2 and "not PCI addresses" in err.getvalue()
