"""A simulated kernel for the binder: a fake sysfs/dev/proc tree whose driver files behave like Linux's.

`SimKernel(tmp)` builds the tree under `tmp`; `sim.root()` is a SysfsRoot over it whose `write_attr` goes to the
simulator, so the binder's reads see a real directory tree and its writes have the kernel's effects:

- `driver_override` stores a driver name ("(null)" when cleared with a newline);
- `drivers/<d>/unbind` removes the driver link (ENODEV when not bound to d); for vfio-pci it then blocks while a
  process holds a VFIO *device* fd, as `vfio_unregister_group_dev` does, with the driver link already gone and the
  device lock held (reading `driver_override` blocks meanwhile, as on Linux);
- `drivers/<d>/bind` binds if the device is driverless (else EBUSY) and d matches (driver_override, else the native
  driver; vfio-pci matches nothing by id, since we never use new_id); otherwise ENODEV;
- `drivers_probe` binds a driverless device to its override (if loaded) or native driver;
- `/dev/vfio/<group>` exists while any member of the group is bound to vfio-pci;
- processes holding VFIO nodes are `proc/<pid>/fd/<n>` links, found by the binder's in-use scan.

Faults: `crash_at=k` raises `Crash` right after the k-th write took effect (the agent dies there); `fail` maps a
host path to an errno returned by the next write to it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.errors import SysfsError
from nodeagent.sysfs.root import SysfsRoot

VFIO = "vfio-pci"


class Crash(BaseException):
    """The agent process dies at this point (BaseException: no `except Exception` swallows it)."""


@dataclass
class _Device:
    address: str
    native: str | None
    group: int
    bridge: bool = False
    driver: str | None = None
    override: str | None = None


@dataclass
class _Process:
    pid: int
    comm: str
    fds: dict[int, str] = field(default_factory=dict)
    device_fds: set[str] = field(default_factory=set)


class SimKernel:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.devices: dict[str, _Device] = {}
        self.processes: dict[int, _Process] = {}
        self.writes: list[tuple[str, str]] = []
        self.modprobes: list[tuple[str, ...]] = []
        self.crash_at: int | None = None
        self.fail: dict[str, int] = {}
        self._count = 0
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)
        self.blocked: set[str] = set()
        for d in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/kernel/iommu_groups", "sys/module",
                  "sys/devices/pci0000:00", "dev/vfio", "proc"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "sys/bus/pci/drivers_probe").write_text("")
        (base / "dev/vfio/vfio").write_text("")

    # -- building ------------------------------------------------------------------------------------------------

    def root(self) -> SimRoot:
        return SimRoot(self)

    def add_driver(self, name: str) -> None:
        d = self.base / "sys/bus/pci/drivers" / name
        d.mkdir(parents=True, exist_ok=True)
        for attr in ("bind", "unbind", "new_id"):
            (d / attr).write_text("")

    def add_device(
        self, address: str, *, native: str | None, group: int, bridge: bool = False, bound: bool = True
    ) -> None:
        dev = _Device(address, native, group, bridge)
        self.devices[address] = dev
        d = self._devpath(address)
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x8086\n")
        (d / "class").write_text("0x060400\n" if bridge else "0x020000\n")
        (d / "driver_override").write_text("(null)\n")
        if bridge:
            (d / "subordinate_bus_number").write_text("2\n")
        g = self.base / "sys/kernel/iommu_groups" / str(group) / "devices"
        g.mkdir(parents=True, exist_ok=True)
        (d / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")
        (g / address).symlink_to(f"../../../../devices/pci0000:00/{address}")
        (self.base / "sys/bus/pci/devices" / address).symlink_to(f"../../../devices/pci0000:00/{address}")
        if native is not None:
            self.add_driver(native)
            if bound:
                self._link(dev, native)

    def remove_device(self, address: str) -> None:
        """The device disappears (hot-unplug): its links and directory go."""
        with self._lock:
            dev = self.devices.pop(address)
            if dev.driver is not None:
                (self.base / "sys/bus/pci/drivers" / dev.driver / address).unlink()
            (self.base / "sys/bus/pci/devices" / address).unlink()
            (self.base / "sys/kernel/iommu_groups" / str(dev.group) / "devices" / address).unlink()
            d = self._devpath(address)
            for f in sorted(d.iterdir()):
                f.unlink()
            d.rmdir()
            self._sync_vfio_node(dev.group)

    def load_modules(self, names: Sequence[str]) -> None:
        """The binder's ModuleLoader: loading vfio-pci registers its driver directory."""
        self.modprobes.append(tuple(names))
        if "vfio-pci" in names:
            self.add_driver(VFIO)
        for n in names:
            (self.base / "sys/module" / n.replace("-", "_")).mkdir(exist_ok=True)

    def bind_foreign(self, address: str) -> None:
        """Someone else (not the agent) put this device on vfio-pci."""
        self.load_modules(["vfio-pci", "vfio_iommu_type1"])
        dev = self.devices[address]
        if dev.driver is not None:
            self._unlink(dev)
        self._set_override(dev, VFIO)
        self._link(dev, VFIO)

    def hold(self, address: str, *, pid: int = 4242, comm: str = "qemu-kvm", device_fd: bool = True) -> int:
        """A process opens the device's group node (and, like QEMU, a VFIO device fd)."""
        with self._lock:
            group = self.devices[address].group
            proc = self.processes.setdefault(pid, _Process(pid, comm))
            fd = 10 + len(proc.fds)
            proc.fds[fd] = f"/dev/vfio/{group}"
            if device_fd:
                proc.device_fds.add(address)
                proc.fds[fd + 100] = "anon_inode:[vfio-device]"
            pdir = self.base / "proc" / str(pid)
            (pdir / "fd").mkdir(parents=True, exist_ok=True)
            (pdir / "comm").write_text(comm + "\n")
            for n, target in proc.fds.items():
                if not (pdir / "fd" / str(n)).is_symlink():
                    (pdir / "fd" / str(n)).symlink_to(target)
            return pid

    def exit_process(self, pid: int) -> None:
        """The holder exits: its fds close and a blocked vfio unbind completes."""
        with self._lock:
            self.processes.pop(pid, None)
            pdir = self.base / "proc" / str(pid)
            for f in sorted(pdir.rglob("*"), reverse=True):
                f.unlink() if not f.is_dir() or f.is_symlink() else f.rmdir()
            pdir.rmdir()
            self._released.notify_all()

    # -- what the tests look at ----------------------------------------------------------------------------------

    def driver(self, address: str) -> str | None:
        return self.devices[address].driver

    def vfio_node(self, group: int) -> bool:
        return (self.base / "dev/vfio" / str(group)).exists()

    # -- the kernel's side of writes -----------------------------------------------------------------------------

    def write(self, host_path: str, value: str) -> None:
        with self._lock:
            if host_path in self.fail:
                code = self.fail.pop(host_path)
                raise SysfsError(f"injected failure writing {host_path}", path=host_path, errno=code)
            self.writes.append((host_path, value))
            self._effect(host_path, value)
            self._count += 1
            if self.crash_at is not None and self._count == self.crash_at:
                raise Crash(f"crash after write {self._count}: {host_path} <- {value!r}")

    def _effect(self, path: str, value: str) -> None:
        parts = path.strip("/").split("/")
        if path == "/sys/bus/pci/drivers_probe":
            dev = self._dev(value, path)
            if dev.driver is None:
                for cand in (dev.override,) if dev.override else (dev.native,):
                    if cand and (self.base / "sys/bus/pci/drivers" / cand).is_dir():
                        self._link(dev, cand)
            return
        if parts[:4] == ["sys", "bus", "pci", "devices"] and parts[-1] == "driver_override":
            self._set_override(self._dev(parts[4], path), value.strip() or None)
            return
        if parts[:4] == ["sys", "bus", "pci", "drivers"] and len(parts) == 6:
            drv, attr = parts[4], parts[5]
            if attr == "new_id":
                return
            dev = self._dev(value.strip(), path)
            if attr == "unbind":
                if dev.driver != drv:
                    raise SysfsError(f"{dev.address} not bound to {drv}", path=path, errno=errno.ENODEV)
                self._unlink(dev)
                if drv == VFIO:
                    self.blocked.add(dev.address)
                    while any(dev.address in p.device_fds for p in self.processes.values()):
                        self._released.wait()
                    self.blocked.discard(dev.address)
                    self._sync_vfio_node(dev.group)
                return
            if attr == "bind":
                if dev.driver is not None:
                    raise SysfsError(f"{dev.address} already bound", path=path, errno=errno.EBUSY)
                wanted = dev.override if dev.override is not None else dev.native
                if wanted != drv:
                    raise SysfsError(f"{drv} does not match {dev.address}", path=path, errno=errno.ENODEV)
                self._link(dev, drv)
                return
        raise SysfsError(f"no such attribute {path}", path=path, errno=errno.ENOENT)

    # -- tree upkeep ---------------------------------------------------------------------------------------------

    def _devpath(self, address: str) -> Path:
        return self.base / "sys/devices/pci0000:00" / address

    def _dev(self, address: str, path: str) -> _Device:
        dev = self.devices.get(address.strip())
        if dev is None:
            raise SysfsError(f"no device {address!r}", path=path, errno=errno.ENODEV)
        return dev

    def _set_override(self, dev: _Device, name: str | None) -> None:
        dev.override = name
        (self._devpath(dev.address) / "driver_override").write_text(f"{name or '(null)'}\n")

    def _link(self, dev: _Device, drv: str) -> None:
        dev.driver = drv
        os.symlink(f"../../../bus/pci/drivers/{drv}", self._devpath(dev.address) / "driver")
        (self.base / "sys/bus/pci/drivers" / drv / dev.address).symlink_to(
            f"../../../../devices/pci0000:00/{dev.address}"
        )
        self._sync_vfio_node(dev.group)

    def _unlink(self, dev: _Device) -> None:
        assert dev.driver is not None
        (self._devpath(dev.address) / "driver").unlink()
        (self.base / "sys/bus/pci/drivers" / dev.driver / dev.address).unlink()
        was = dev.driver
        dev.driver = None
        if was != VFIO:
            self._sync_vfio_node(dev.group)

    def _sync_vfio_node(self, group: int) -> None:
        node = self.base / "dev/vfio" / str(group)
        on_vfio = any(d.driver == VFIO or d.address in self.blocked for d in self.devices.values() if d.group == group)
        if on_vfio and not node.exists():
            node.write_text("")
        elif not on_vfio and node.exists():
            node.unlink()


class SimRoot(SysfsRoot):
    """A SysfsRoot over the simulator's tree whose writes go through the simulated kernel."""

    __slots__ = ("sim",)

    def __init__(self, sim: SimKernel) -> None:
        super().__init__(sim.base)
        self.sim = sim

    def write_attr(self, host_path: str, value: str) -> None:
        self.real(host_path)  # the same path checks as the real root
        self.sim.write(host_path, value)

    def read_attr(self, host_path: str) -> str:
        """Like Linux, reading driver_override takes the device lock, which a blocked unbind holds."""
        if host_path.endswith("/driver_override"):
            address = host_path.rsplit("/", 2)[-2]
            with self.sim._released:
                while address in self.sim.blocked:
                    self.sim._released.wait()
        return super().read_attr(host_path)
