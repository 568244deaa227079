"""Who holds a vfio device open: the processes whose file descriptors point at its VFIO nodes.

A release must write nothing while anything uses the device, because unbinding vfio-pci under a holder blocks in
the kernel until the holder lets go. Holders are found by scanning `/proc/*/fd` links (through the root, so the
agent sees the host's `/proc`) for the group node `/dev/vfio/<group>`, the iommufd cdev `/dev/vfio/devices/vfioN`
and, where the kernel reports it in fdinfo, a VFIO device fd (`anon_inode:[vfio-device]`) of this device. The
kubelet's view (PodResources allocations) is the caller's and comes in as a callable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.errors import SysfsError
from nodeagent.sysfs.root import SysfsRoot
from policy.names import pci_address

log = logging.getLogger(__name__)

_VFIO_DEVICE_ANON = "anon_inode:[vfio-device]"
_FDINFO_SYSPATH = "vfio-device-syspath:"


@dataclass(frozen=True)
class Holder:
    """A process holding one of the device's VFIO nodes open."""

    pid: int
    comm: str
    path: str

    def __str__(self) -> str:
        return f"{self.comm} (pid {self.pid}) on {self.path}"


def vfio_nodes(root: SysfsRoot, address: str, iommu_group: str | None) -> tuple[str, ...]:
    """Host paths of the device's VFIO nodes: the group node and any iommufd cdev (kernel >= 6.6)."""
    address = pci_address(address)
    nodes = []
    if iommu_group is not None and iommu_group.isdigit():
        nodes.append(root.dev("vfio", iommu_group))
    for name in root.children(root.sys("bus", "pci", "devices", address, "vfio-dev")):
        if name.startswith("vfio") and name[4:].isdigit():
            nodes.append(root.dev("vfio", "devices", name))
    return tuple(nodes)


def find_holders(root: SysfsRoot, nodes: Iterable[str], device_syspath: str | None = None) -> tuple[Holder, ...]:
    """Every (pid, fd) that points at one of `nodes`, or is a VFIO device fd of `device_syspath`.

    Processes that exit or cannot be read during the scan are skipped: the scan is a snapshot.
    """
    wanted = frozenset(nodes)
    found: list[Holder] = []
    for pid in root.children(root.proc()):
        if not pid.isdigit():
            continue
        try:
            fds = root.children(root.proc(pid, "fd"))
        except SysfsError:
            continue
        for fd in fds:
            try:
                target = root.read_link(root.proc(pid, "fd", fd))
            except SysfsError:
                continue
            path = target if target in wanted else None
            if path is None and target == _VFIO_DEVICE_ANON and device_syspath is not None:
                path = _device_fd_path(root, pid, fd, device_syspath)
            if path is not None:
                found.append(Holder(pid=int(pid), comm=_comm(root, pid), path=path))
    found.sort(key=lambda h: (h.pid, h.path))
    return tuple(dict.fromkeys(found))


def _device_fd_path(root: SysfsRoot, pid: str, fd: str, device_syspath: str) -> str | None:
    try:
        info = root.read_attr(root.proc(pid, "fdinfo", fd))
    except SysfsError:
        return None
    for line in info.splitlines():
        if line.startswith(_FDINFO_SYSPATH) and line[len(_FDINFO_SYSPATH) :].strip() == device_syspath:
            return _VFIO_DEVICE_ANON
    return None


def _comm(root: SysfsRoot, pid: str) -> str:
    try:
        return root.read_attr(root.proc(pid, "comm"))
    except SysfsError:
        return "?"
