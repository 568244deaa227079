"""Builds synthetic host trees (sys, dev, proc) for tests and the benchmark.

The layout follows the kernel's: devices live under sys/devices/..., sys/bus/*/devices and sys/class/* hold relative
symlinks to them, every PCI function has a correct config space (so `lspci -A linux-sysfs` reads the same tree), and
proc holds mountinfo, swaps and the routing tables. Example:

    tree = SysfsTree(tmp_path)
    tree.pci("0000:3b:00.0", vendor="10de", device="1eb8", driver="nvidia", iommu_group=45)
    tree.usb("1-2", vendor="0951", product="1666", controller="0000:00:14.0")
    root = tree.root()
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from nodeagent.sysfs.root import SysfsRoot


def _link(path: Path, target: Path) -> None:
    """A relative symlink at `path` pointing at `target`, as sysfs has them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.symlink_to(os.path.relpath(target, path.parent))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pci_config(
    *,
    vendor: int,
    device: int,
    class_code: int,
    revision: int,
    header_type: int,
    subsystem_vendor: int,
    subsystem_device: int,
    secondary_bus: int = 0,
    size: int = 64,
) -> bytes:
    """A config space as the kernel exposes it: 64 bytes to non-root readers, 256 or 4096 to root."""
    cfg = bytearray(size)
    struct.pack_into("<HHHH", cfg, 0, vendor, device, 0x0006, 0x0010)
    cfg[8] = revision
    cfg[9] = class_code & 0xFF
    cfg[10] = (class_code >> 8) & 0xFF
    cfg[11] = (class_code >> 16) & 0xFF
    cfg[14] = header_type
    if header_type & 0x7F == 0:
        struct.pack_into("<HH", cfg, 0x2C, subsystem_vendor, subsystem_device)
    elif header_type & 0x7F == 1:
        cfg[0x18], cfg[0x19], cfg[0x1A] = 0, secondary_bus, secondary_bus
    elif header_type & 0x7F == 2 and size >= 0x44:
        struct.pack_into("<HH", cfg, 0x40, subsystem_vendor, subsystem_device)
    return bytes(cfg)


class SysfsTree:
    """A host tree under `base`: call pci/usb/block/net/... then `root()`."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.sys = self.base / "sys"
        self.proc = self.base / "proc"
        self.dev = self.base / "dev"
        for d in ("sys/bus/pci/devices", "sys/bus/usb/devices", "sys/class/block", "sys/class/net", "sys/dev/block"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.proc / "net").mkdir(parents=True, exist_ok=True)
        (self.proc / "self").mkdir(parents=True, exist_ok=True)
        self.dev.mkdir(exist_ok=True)
        self._pci_paths: dict[str, Path] = {}
        self._mounts: list[str] = []
        self._swaps: list[str] = []
        self._routes: list[str] = []
        self._routes6: list[str] = []
        self._inet6: list[str] = []
        self._next_minor = 0
        self._write_proc()

    def root(self) -> SysfsRoot:
        return SysfsRoot(self.base)

    # -- PCI ---------------------------------------------------------------------------------------------------

    def pci_path(self, address: str) -> Path:
        return self._pci_paths[address]

    def pci(
        self,
        address: str,
        *,
        vendor: str = "8086",
        device: str = "10fb",
        cls: str = "020000",
        revision: str = "01",
        subsystem_vendor: str = "0000",
        subsystem_device: str = "0000",
        header_type: int = 0,
        driver: str | None = None,
        iommu_group: int | None = None,
        numa_node: int | None = -1,
        reset_methods: Sequence[str] | None = ("flr", "bus"),
        parent: str | None = None,
        sriov_numvfs: int | None = None,
        physfn: str | None = None,
        boot_vga: bool | None = None,
        config_size: int = 64,
        secondary_bus: int = 0,
    ) -> Path:
        """One PCI function (a bridge with header_type=1 and secondary_bus), nested under `parent` if given."""
        domain, bus = address.split(":")[:2]
        if parent is not None:
            where = self._pci_paths[parent] / address
        else:
            where = self.sys / "devices" / f"pci{domain}:{bus}" / address
        where.mkdir(parents=True, exist_ok=True)
        self._pci_paths[address] = where
        cfg = pci_config(
            vendor=int(vendor, 16),
            device=int(device, 16),
            class_code=int(cls, 16),
            revision=int(revision, 16),
            header_type=header_type,
            subsystem_vendor=int(subsystem_vendor, 16),
            subsystem_device=int(subsystem_device, 16),
            secondary_bus=secondary_bus,
            size=config_size,
        )
        (where / "config").write_bytes(cfg)
        attrs = {
            "vendor": f"0x{vendor}",
            "device": f"0x{device}",
            "class": f"0x{cls}",
            "revision": f"0x{revision}",
            "subsystem_vendor": f"0x{subsystem_vendor}",
            "subsystem_device": f"0x{subsystem_device}",
            "irq": "0",
            "enable": "1",
            "modalias": f"pci:v0000{vendor.upper()}d0000{device.upper()}sv0000{subsystem_vendor.upper()}"
            f"sd0000{subsystem_device.upper()}bc{cls[:2].upper()}sc{cls[2:4].upper()}i{cls[4:].upper()}",
            "resource": "".join("0x0000000000000000 0x0000000000000000 0x0000000000000000\n" for _ in range(13)),
        }
        for name, value in attrs.items():
            _write(where / name, value + "\n")
        uevent = [f"PCI_CLASS={cls.upper().lstrip('0') or '0'}", f"PCI_ID={vendor.upper()}:{device.upper()}"]
        if driver:
            uevent.insert(0, f"DRIVER={driver}")
        _write(where / "uevent", "\n".join([*uevent, f"PCI_SLOT_NAME={address}"]) + "\n")
        if numa_node is not None:
            _write(where / "numa_node", f"{numa_node}\n")
        if reset_methods is not None:
            _write(where / "reset_method", " ".join(reset_methods) + "\n")
        if sriov_numvfs is not None:
            _write(where / "sriov_numvfs", f"{sriov_numvfs}\n")
            _write(where / "sriov_totalvfs", f"{max(sriov_numvfs, 8)}\n")
        if physfn is not None:
            _link(where / "physfn", self._pci_paths[physfn])
        if boot_vga is not None:
            _write(where / "boot_vga", "1\n" if boot_vga else "0\n")
        if driver:
            drv = self.sys / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            _link(where / "driver", drv)
            _link(drv / address, where)
        if iommu_group is not None:
            group = self.sys / "kernel/iommu_groups" / str(iommu_group)
            (group / "devices").mkdir(parents=True, exist_ok=True)
            _link(where / "iommu_group", group)
            _link(group / "devices" / address, where)
        _link(self.sys / "bus/pci/devices" / address, where)
        return where

    def remove_pci(self, address: str) -> None:
        """The function disappears (hot-unplug): its directory and bus link go away."""
        import shutil

        shutil.rmtree(self._pci_paths.pop(address))
        (self.sys / "bus/pci/devices" / address).unlink()

    # -- USB ---------------------------------------------------------------------------------------------------

    def usb_root_hub(self, bus: int, controller: str, *, speed_hub: str = "0002") -> Path:
        where = self._pci_paths[controller] / f"usb{bus}"
        self._usb_device_files(where, "1d6b", speed_hub, bus, 1, device_class="09", interfaces=("09",))
        _write(where / "product", "EHCI Host Controller\n")
        _link(self.sys / "bus/usb/devices" / f"usb{bus}", where)
        return where

    def usb(
        self,
        port_path: str,
        *,
        vendor: str,
        product: str,
        devnum: int,
        controller: str,
        device_class: str = "00",
        interfaces: Sequence[str] = ("08",),
        serial: str | None = None,
        product_string: str | None = None,
        manufacturer: str | None = None,
    ) -> Path:
        """A USB device `1-2.3` (bus 1, port 2, then 3) behind root hub usb<bus> of `controller`."""
        bus = int(port_path.split("-")[0])
        hub = self._pci_paths[controller] / f"usb{bus}"
        if not hub.exists():
            self.usb_root_hub(bus, controller)
        # Nest under the parent hub's directory when the port path has one (1-2.3 lives in 1-2/).
        head, _, _ = port_path.rpartition(".")
        parent = hub / head if head and (hub / head).exists() else hub
        where = parent / port_path
        self._usb_device_files(where, vendor, product, bus, devnum, device_class=device_class, interfaces=interfaces)
        if serial is not None:
            _write(where / "serial", serial + "\n")
        if product_string is not None:
            _write(where / "product", product_string + "\n")
        if manufacturer is not None:
            _write(where / "manufacturer", manufacturer + "\n")
        _link(self.sys / "bus/usb/devices" / port_path, where)
        return where

    def _usb_device_files(
        self,
        where: Path,
        vendor: str,
        product: str,
        bus: int,
        devnum: int,
        *,
        device_class: str,
        interfaces: Sequence[str],
    ) -> None:
        where.mkdir(parents=True, exist_ok=True)
        attrs = {
            "idVendor": vendor,
            "idProduct": product,
            "busnum": str(bus),
            "devnum": str(devnum),
            "bDeviceClass": device_class,
            "bDeviceSubClass": "00",
            "bDeviceProtocol": "00",
            "bcdDevice": "0100",
            "bNumInterfaces": f"{len(interfaces):2d}",
            "bConfigurationValue": "1",
            "speed": "480",
            "version": " 2.00",
        }
        for name, value in attrs.items():
            _write(where / name, value + "\n")
        _write(
            where / "uevent",
            f"MAJOR=189\nMINOR={(bus - 1) * 128 + devnum - 1}\nDEVNAME=bus/usb/{bus:03d}/{devnum:03d}\n"
            f"DEVTYPE=usb_device\nDRIVER=usb\nPRODUCT={int(vendor, 16):x}/{int(product, 16):x}/100\n"
            f"TYPE={int(device_class, 16)}/0/0\nBUSNUM={bus:03d}\nDEVNUM={devnum:03d}\n",
        )
        name = where.name
        for i, cls in enumerate(interfaces):
            iface = where / f"{'1-0' if name.startswith('usb') else name}:1.{i}"
            _write(iface / "bInterfaceClass", cls + "\n")
            _write(iface / "bInterfaceNumber", f"{i:02x}\n")
            _link(self.sys / "bus/usb/devices" / iface.name, iface)
        dev = self.dev / "bus/usb" / f"{bus:03d}" / f"{devnum:03d}"
        _write(dev, "")

    # -- block devices, mounts, swap ---------------------------------------------------------------------------

    def _majmin(self, major: int) -> str:
        self._next_minor += 1
        return f"{major}:{self._next_minor}"

    def _block_common(self, where: Path, name: str, major: int) -> Path:
        majmin = self._majmin(major)
        _write(where / "dev", majmin + "\n")
        _write(where / "uevent", f"MAJOR={majmin.split(':')[0]}\nMINOR={majmin.split(':')[1]}\nDEVNAME={name}\n")
        _link(self.sys / "class/block" / name, where)
        _link(self.sys / "dev/block" / majmin, where)
        _write(self.dev / name, "")
        return where

    def disk(self, name: str, *, pci: str, partitions: Iterable[int] = (), subpath: str = "") -> Path:
        """A disk under a PCI function (e.g. nvme0n1 under an NVMe controller, sda under an AHCI/RAID HBA)."""
        base = self._pci_paths[pci] / subpath if subpath else self._pci_paths[pci] / "block"
        where = self._block_common(base / name, name, 259)
        for n in partitions:
            pname = f"{name}p{n}" if name[-1].isdigit() else f"{name}{n}"
            part = self._block_common(where / pname, pname, 259)
            _write(part / "partition", f"{n}\n")
        return where

    def nvme_multipath(
        self, name: str, *, controllers: dict[str, str], partitions: Iterable[int] = (), subsystem: str = "nvme-subsys0"
    ) -> Path:
        """A native-multipath NVMe namespace: the block device sits under a virtual subsystem that links its
        controllers (`controllers` maps nvmeN to the PCI function that is that controller)."""
        sub = self.sys / "devices/virtual/nvme-subsystem" / subsystem
        for ctrl, pci in controllers.items():
            ctrl_dir = self._pci_paths[pci] / "nvme" / ctrl
            ctrl_dir.mkdir(parents=True, exist_ok=True)
            _link(sub / ctrl, ctrl_dir)
        where = self._block_common(sub / name, name, 259)
        for n in partitions:
            pname = f"{name}p{n}"
            part = self._block_common(where / pname, pname, 259)
            _write(part / "partition", f"{n}\n")
        return where

    def virtual_block(
        self, name: str, *, slaves: Iterable[str] = (), dm_name: str | None = None, backing_file: str | None = None
    ) -> Path:
        """dm-N (LVM / crypt), mdN or loopN; `slaves` are the block devices beneath it."""
        where = self._block_common(self.sys / "devices/virtual/block" / name, name, 253)
        (where / "slaves").mkdir(exist_ok=True)
        for s in slaves:
            _link(where / "slaves" / s, (self.sys / "class/block" / s).resolve())
            (self.sys / "class/block" / s).resolve().joinpath("holders").mkdir(exist_ok=True)
            _link((self.sys / "class/block" / s).resolve() / "holders" / name, where)
        if dm_name is not None:
            _write(where / "dm/name", dm_name + "\n")
            _link(self.dev / "mapper" / dm_name, self.dev / name)
        if backing_file is not None:
            _write(where / "loop/backing_file", backing_file + "\n")
        return where

    def mount(self, device: str | None, mountpoint: str, *, fstype: str = "ext4", majmin: str | None = None) -> None:
        """A mountinfo line; device is a block device name (its major:minor is used) or None for a virtual fs."""
        if device is not None:
            mm = majmin or (self.sys / "class/block" / device / "dev").read_text().strip()
            source = f"/dev/{device}"
        else:
            mm, source = majmin or "0:50", fstype
        n = len(self._mounts) + 20
        self._mounts.append(f"{n} 1 {mm} / {mountpoint} rw,relatime shared:{n} - {fstype} {source} rw")
        self._write_proc()

    def swap(self, filename: str, kind: str = "partition") -> None:
        self._swaps.append(f"{filename}\t{kind}\t8388604\t0\t-2")
        self._write_proc()

    # -- network -----------------------------------------------------------------------------------------------

    def net(
        self,
        name: str,
        *,
        pci: str | None = None,
        kind: str | None = None,
        master: str | None = None,
        lower: Iterable[str] = (),
    ) -> Path:
        """A network interface: physical under `pci`, or virtual (`kind` bridge/bond/vlan); `master` enslaves it."""
        if pci is not None:
            where = self._pci_paths[pci] / "net" / name
            where.mkdir(parents=True, exist_ok=True)
            _link(where / "device", self._pci_paths[pci])
        else:
            where = self.sys / "devices/virtual/net" / name
            where.mkdir(parents=True, exist_ok=True)
        _write(where / "ifindex", f"{len(list((self.sys / 'class/net').iterdir())) + 1}\n")
        _write(where / "operstate", "up\n")
        if kind == "bridge":
            (where / "bridge").mkdir(exist_ok=True)
            (where / "brif").mkdir(exist_ok=True)
        elif kind == "bond":
            _write(where / "bonding/slaves", "\n")
        _link(self.sys / "class/net" / name, where)
        for low in lower:
            _link(where / f"lower_{low}", (self.sys / "class/net" / low).resolve())
            _link((self.sys / "class/net" / low).resolve() / f"upper_{name}", where)
        if master is not None:
            self.enslave(name, master)
        return where

    def enslave(self, port: str, master: str) -> None:
        port_dir = (self.sys / "class/net" / port).resolve()
        master_dir = (self.sys / "class/net" / master).resolve()
        _link(port_dir / "master", master_dir)
        _link(master_dir / f"lower_{port}", port_dir)
        _link(port_dir / f"upper_{master}", master_dir)
        if (master_dir / "brif").is_dir():
            _link(master_dir / "brif" / port, port_dir / "brport")
            (port_dir / "brport").mkdir(exist_ok=True)
        slaves = master_dir / "bonding/slaves"
        if slaves.exists():
            current = slaves.read_text().split()
            slaves.write_text(" ".join([*current, port]) + "\n")

    def route(self, iface: str, destination: str = "0.0.0.0", mask: str = "0.0.0.0", gateway: str = "0.0.0.0") -> None:
        """An IPv4 route as /proc/net/route lists it (little-endian hex)."""

        def hexle(ip: str) -> str:
            return "".join(f"{int(p):02X}" for p in reversed(ip.split(".")))

        flags = 0x0001 | (0x0002 if gateway != "0.0.0.0" else 0)
        self._routes.append(
            f"{iface}\t{hexle(destination)}\t{hexle(gateway)}\t{flags:04X}\t0\t0\t0\t{hexle(mask)}\t0\t0\t0"
        )
        self._write_proc()

    def route6_default(self, iface: str) -> None:
        zero = "0" * 32
        gateway = "fe800000000000000000000000000001"
        self._routes6.append(f"{zero} 00 {zero} 00 {gateway} 00000400 00000001 00000000 00000003 {iface:>8}")
        self._write_proc()

    def inet6(self, iface: str, address_hex: str, prefix: int = 64) -> None:
        self._inet6.append(f"{address_hex} 02 {prefix:02x} 00 80 {iface:>8}")
        self._write_proc()

    def _write_proc(self) -> None:
        _write(self.proc / "self/mountinfo", "".join(m + "\n" for m in self._mounts))
        swaps_header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        _write(self.proc / "swaps", swaps_header + "".join(s + "\n" for s in self._swaps))
        header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
        _write(self.proc / "net/route", header + "\n" + "".join(r + "\n" for r in self._routes))
        _write(self.proc / "net/ipv6_route", "".join(r + "\n" for r in self._routes6))
        _write(self.proc / "net/if_inet6", "".join(r + "\n" for r in self._inet6))
