from __future__ import annotations

from pathlib import Path

from nodeagent.hostcritical import HostCritical, scan_host_critical
from nodeagent.sysfs.pci import scan_pci
from nodeagent.sysfs.root import SysfsRoot
from tests.support.sysfs_tree import SysfsTree

NVME = "0000:3d:00.0"
HBA = "0000:5e:00.0"
HBA2 = "0000:5f:00.0"
NIC1, NIC2, NIC3, NIC4 = "0000:18:00.0", "0000:18:00.1", "0000:19:00.0", "0000:19:00.1"
GPU = "0000:3b:00.0"


def _server(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(tmp_path)
    tree.pci(NVME, vendor="144d", device="a808", cls="010802", driver="nvme")
    tree.pci(HBA, vendor="1000", device="0097", cls="010700", driver="mpt3sas")
    tree.pci(HBA2, vendor="1000", device="0097", cls="010700", driver="mpt3sas")
    for a in (NIC1, NIC2, NIC3, NIC4):
        tree.pci(a, vendor="8086", device="1572", cls="020000", driver="i40e")
    tree.pci(GPU, vendor="10de", device="20b0", cls="030200", driver="nvidia")
    return tree


def _scan(tree: SysfsTree, node_ip: str | None = None) -> HostCritical:
    root = tree.root()
    return scan_host_critical(root, scan_pci(root), node_ip)


def test_the_root_filesystem_partition_makes_its_controller_critical(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("nvme0n1", pci=NVME, partitions=(1, 2), subpath="nvme/nvme0")
    tree.mount("nvme0n1p2", "/")
    tree.mount("nvme0n1p1", "/boot/efi", fstype="vfat")
    tree.mount(None, "/proc", fstype="proc")
    result = _scan(tree)
    assert result.reasons[NVME] == ["holds / via nvme0n1p2", "holds /boot/efi via nvme0n1p1"]
    assert result.root_traced
    assert GPU not in result.reasons


def test_bind_mounts_of_one_device_give_one_reason(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("nvme0n1", pci=NVME, partitions=(1,))
    for where in ("/", "/var/lib/kubelet/pods/x", "/etc/hosts"):
        tree.mount("nvme0n1p1", where)
    assert _scan(tree).reasons[NVME] == ["holds / via nvme0n1p1 (and 2 more mounts)"]


def test_lvm_volumes_are_followed_to_their_physical_volume(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("nvme0n1", pci=NVME, partitions=(3,))
    tree.virtual_block("dm-0", slaves=["nvme0n1p3"], dm_name="vg0-root")
    tree.mount("dm-0", "/")
    assert _scan(tree).reasons[NVME] == ["holds / via vg0-root → nvme0n1p3"]


def test_md_raid_members_on_two_controllers_are_both_critical(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("sda", pci=HBA, partitions=(1,), subpath="host0/target0:0:0/0:0:0:0/block")
    tree.disk("sdb", pci=HBA2, partitions=(1,), subpath="host1/target1:0:0/1:0:0:0/block")
    tree.virtual_block("md0", slaves=["sda1", "sdb1"])
    tree.mount("md0", "/var/lib/longhorn")
    result = _scan(tree)
    assert result.reasons[HBA] == ["holds /var/lib/longhorn via md0 → sda1"]
    assert result.reasons[HBA2] == ["holds /var/lib/longhorn via md0 → sdb1"]


def test_a_loop_device_is_followed_to_the_device_holding_its_backing_file(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("nvme0n1", pci=NVME, partitions=(1,))
    tree.disk("sda", pci=HBA, partitions=(1,))
    tree.mount("nvme0n1p1", "/")
    tree.mount("sda1", "/var/lib/images")
    tree.virtual_block("loop0", backing_file="/var/lib/images/iso/cd.img")
    tree.mount("loop0", "/mnt/cd", fstype="iso9660")
    assert _scan(tree).reasons[HBA] == [
        "holds /var/lib/images via sda1",
        "holds /mnt/cd via loop0 (/var/lib/images/iso/cd.img) → sda1",
    ]


def test_swap_partitions_and_swap_files_are_traced(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.disk("nvme0n1", pci=NVME, partitions=(1,))
    tree.disk("sda", pci=HBA, partitions=(1, 2))
    tree.virtual_block("dm-1", slaves=["sda2"], dm_name="vg1-swap")
    tree.mount("nvme0n1p1", "/")
    tree.swap("/dev/mapper/vg1-swap")
    tree.swap("/swap.img", kind="file")
    result = _scan(tree)
    assert result.reasons[HBA] == ["holds swap /dev/mapper/vg1-swap via vg1-swap → sda2"]
    assert "holds swap /swap.img via /swap.img → nvme0n1p1" in result.reasons[NVME]


def test_the_default_route_is_followed_through_bridge_and_bond(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("eno1", pci=NIC1)
    tree.net("eno2", pci=NIC2)
    tree.net("mgmt-bo", kind="bond")
    tree.net("mgmt-br", kind="bridge")
    tree.enslave("eno1", "mgmt-bo")
    tree.enslave("eno2", "mgmt-bo")
    tree.enslave("mgmt-bo", "mgmt-br")
    tree.route("mgmt-br", gateway="10.0.0.1")
    result = _scan(tree)
    assert "carries the default route via mgmt-br → mgmt-bo → eno1" in result.reasons[NIC1]
    assert "carries the default route via mgmt-br → mgmt-bo → eno2" in result.reasons[NIC2]
    assert "is a slave of bond mgmt-bo (eno1)" in result.reasons[NIC1]


def test_the_default_route_is_followed_through_a_vlan(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("eno3", pci=NIC3)
    tree.net("eno3.100", kind="vlan", lower=["eno3"])
    tree.route("eno3.100", gateway="192.168.100.1")
    assert _scan(tree).reasons[NIC3] == ["carries the default route via eno3.100 → eno3"]


def test_an_ipv6_default_route_counts(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("eno4", pci=NIC4)
    tree.route6_default("eno4")
    assert _scan(tree).reasons[NIC4] == ["carries the default route via eno4"]


def test_the_nic_carrying_the_node_ip_is_critical(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("eno1", pci=NIC1)
    tree.net("ens5", pci=NIC3)
    tree.route("eno1", gateway="10.0.0.1")
    tree.route("eno1", destination="10.0.0.0", mask="255.255.255.0")
    tree.route("ens5", destination="172.16.0.0", mask="255.255.0.0")
    tree.route("ens5", destination="172.16.4.0", mask="255.255.255.0")
    result = _scan(tree, node_ip="172.16.4.9")
    assert result.reasons[NIC3] == ["carries the node IP 172.16.4.9 via ens5"]
    assert NIC4 not in result.reasons


def test_the_nic_carrying_an_ipv6_node_ip_is_critical(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("ens6", pci=NIC4)
    tree.inet6("ens6", "fd000000000000000000000000000005")
    assert _scan(tree, node_ip="fd00::5").reasons[NIC4] == ["carries the node IP fd00::5 via ens6"]


def test_nics_enslaved_to_a_bridge_or_bond_are_critical_without_routes(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.net("ens1f0", pci=NIC3)
    tree.net("ens1f1", pci=NIC4)
    tree.net("vm-br", kind="bridge")
    tree.net("storage-bo", kind="bond")
    tree.enslave("ens1f0", "vm-br")
    tree.enslave("ens1f1", "storage-bo")
    result = _scan(tree)
    assert result.reasons[NIC3] == ["is a port of bridge vm-br (ens1f0)"]
    assert result.reasons[NIC4] == ["is a slave of bond storage-bo (ens1f1)"]


def test_sriov_physical_functions_with_active_vfs_are_critical(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:af:00.0", vendor="8086", device="1572", cls="020000", sriov_numvfs=4)
    tree.pci("0000:af:00.1", vendor="8086", device="1572", cls="020000", sriov_numvfs=0)
    tree.pci("0000:af:02.0", vendor="8086", device="154c", cls="020000", physfn="0000:af:00.0")
    result = _scan(tree)
    assert result.reasons == {"0000:af:00.0": ["is an SR-IOV physical function with 4 active VFs"]}


def test_lpc_and_smbus_functions_are_critical_and_the_boot_vga_is_a_warning(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:1f.0", vendor="8086", device="8d44", cls="060100", driver="lpc_ich")
    tree.pci("0000:00:1f.3", vendor="8086", device="8d22", cls="0c0500", driver="i801_smbus")
    tree.pci("0000:01:00.1", vendor="102b", device="0533", cls="030000", driver="mgag200", boot_vga=True)
    tree.pci("0000:3b:00.0", vendor="10de", device="1eb8", cls="030000", boot_vga=False)
    result = _scan(tree)
    assert set(result.reasons) == {"0000:00:1f.0", "0000:00:1f.3"}
    assert result.reasons["0000:00:1f.0"][0].startswith("is the LPC/ISA bridge")
    assert result.reasons["0000:00:1f.3"][0].startswith("is an SMBus controller")
    assert list(result.warnings) == ["0000:01:00.1"]
    assert "boot VGA" in result.warnings["0000:01:00.1"][0]


def test_a_host_without_traceable_root_reports_it(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.mount(None, "/", fstype="overlay")
    result = _scan(tree)
    assert not result.root_traced
    assert result.reasons == {}


def test_a_separately_given_proc_reads_the_hosts_mount_table_from_pid_1(tmp_path: Path) -> None:
    tree = _server(tmp_path / "host")
    tree.disk("nvme0n1", pci=NVME, partitions=(1,))
    hostproc = tmp_path / "hostproc"
    (hostproc / "1").mkdir(parents=True)
    (hostproc / "self").mkdir()
    line = (tree.sys / "class/block/nvme0n1p1/dev").read_text().strip()
    (hostproc / "1/mountinfo").write_text(f"20 1 {line} / / rw - ext4 /dev/nvme0n1p1 rw\n")
    (hostproc / "self/mountinfo").write_text("20 1 0:50 / / rw - overlay overlay rw\n")
    root = SysfsRoot(tree.base, proc=hostproc)
    result = scan_host_critical(root, scan_pci(root))
    assert result.reasons[NVME] == ["holds / via nvme0n1p1"]


def test_native_multipath_nvme_is_traced_to_every_controller(tmp_path: Path) -> None:
    tree = _server(tmp_path)
    tree.pci("0000:3e:00.0", vendor="144d", device="a808", cls="010802", driver="nvme")
    tree.nvme_multipath("nvme0n1", controllers={"nvme0": NVME, "nvme1": "0000:3e:00.0"}, partitions=(1, 2))
    tree.mount("nvme0n1p2", "/")
    result = _scan(tree)
    assert result.reasons[NVME] == ["holds / via nvme0n1p2 → nvme0"]
    assert result.reasons["0000:3e:00.0"] == ["holds / via nvme0n1p2 → nvme1"]
    assert result.root_traced
