"""Guest-side helpers for kernel-tier scripts (they run inside the qemu guest, never on the host).

`emit` reports a JSON object to the host over the serial console; `CountingRoot` counts the binder's writes so
"writes nothing" can be shown against the real kernel; `python3 -m tests.support.guest hold ADDRESS` is a process
that holds a real VFIO device open (container, group, device fd) until its stdin closes, as QEMU would.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from nodeagent.sysfs.root import SysfsRoot

RESULT_MARK = "PCIDEVICES-RESULT "

# <linux/vfio.h>: _IO(VFIO_TYPE=';', VFIO_BASE=100 + n)
VFIO_GET_API_VERSION = 0x3B64
VFIO_SET_IOMMU = 0x3B66
VFIO_GROUP_GET_STATUS = 0x3B67
VFIO_GROUP_SET_CONTAINER = 0x3B68
VFIO_GROUP_GET_DEVICE_FD = 0x3B6A
VFIO_TYPE1_IOMMU = 1
VFIO_GROUP_FLAGS_VIABLE = 1


PCI = "/sys/bus/pci/devices"


def steps(out: dict[str, Any]) -> Callable[[str], Callable[[Callable[[], None]], Callable[[], None]]]:
    """A decorator factory: `@step("name")` runs the function at once, recording its seconds or its traceback in
    `out`, so one failing step still lets the guest report everything else."""

    def step(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def run(fn: Callable[[], None]) -> Callable[[], None]:
            try:
                start = time.monotonic()
                fn()
                out.setdefault("seconds", {})[name] = round(time.monotonic() - start, 3)
            except Exception:
                out.setdefault("errors", {})[name] = traceback.format_exc()
            return fn

        return run

    return step


def pci_attr(address: str, name: str) -> str:
    with open(f"{PCI}/{address}/{name}") as f:
        return f.read().strip()


def pci_driver(address: str) -> str | None:
    link = f"{PCI}/{address}/driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def pci_group(address: str) -> str:
    return os.path.basename(os.readlink(f"{PCI}/{address}/iommu_group"))


def pci_by_id(vendor: str, device: str) -> list[str]:
    return sorted(a for a in os.listdir(PCI) if pci_attr(a, "vendor") == vendor and pci_attr(a, "device") == device)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_MARK + json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class CountingRoot(SysfsRoot):
    """The real root, with every write recorded (path, value) in order."""

    __slots__ = ("writes",)

    def __init__(self, prefix: str = "/") -> None:
        super().__init__(prefix)
        self.writes: list[tuple[str, str]] = []

    def write_attr(self, host_path: str, value: str) -> None:
        self.writes.append((host_path, value))
        super().write_attr(host_path, value)


class Crash(BaseException):
    """The agent dies here (raised by CrashingRoot after a chosen number of writes took effect)."""


class CrashingRoot(CountingRoot):
    """The real root that kills the caller right after its `after`-th write reached the kernel."""

    __slots__ = ("after",)

    def __init__(self, after: int, prefix: str = "/") -> None:
        super().__init__(prefix)
        self.after = after

    def write_attr(self, host_path: str, value: str) -> None:
        super().write_attr(host_path, value)
        if len(self.writes) == self.after:
            raise Crash(f"crash after {host_path} <- {value!r}")


def group_viable(group: str) -> bool:
    """The kernel's own verdict (VFIO_GROUP_GET_STATUS): every device of the group bound to a vfio driver."""
    fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    try:
        buf = bytearray(struct.pack("II", 8, 0))
        fcntl.ioctl(fd, VFIO_GROUP_GET_STATUS, buf, True)
        return bool(struct.unpack("II", buf)[1] & VFIO_GROUP_FLAGS_VIABLE)
    finally:
        os.close(fd)


def hold(address: str) -> None:
    """Open the device like a VMM does and keep every fd open until stdin closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, b"vfio-holder", 0, 0, 0)  # PR_SET_NAME: the comm the in-use scan reports
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{address}/iommu_group"))
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    group_fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    fcntl.ioctl(group_fd, VFIO_GROUP_SET_CONTAINER, struct.pack("i", container))
    fcntl.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU)
    # The fd comes back as the ioctl's return value: only a mutable buffer with mutate_flag returns it.
    name = bytearray(address.encode() + b"\0")
    device = fcntl.ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, name, True)
    print(f"held {address} group {group} device-fd {device}", flush=True)
    sys.stdin.read()
    for fd in (device, group_fd, container):
        os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hold":
        hold(sys.argv[2])
    else:
        sys.exit("usage: python3 -m tests.support.guest hold ADDRESS")
