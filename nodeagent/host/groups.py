"""IOMMU-group completeness: a group is usable by a VM only when every endpoint in it is bound to vfio-pci.

Bridges (functions with a subordinate bus) are exempt: the kernel does not require them to be bound for the group
to be viable. The check reads the host through the root; the decision over the members is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.sysfs.root import SysfsRoot
from policy.names import is_pci_address

VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class GroupMember:
    address: str
    driver: str | None
    bridge: bool


@dataclass(frozen=True)
class GroupStatus:
    """Completeness of one IOMMU group; `missing` lists the endpoints not bound to vfio-pci."""

    group: str
    members: tuple[GroupMember, ...]
    complete: bool
    missing: tuple[str, ...]


def decide(group: str, members: Iterable[GroupMember]) -> GroupStatus:
    """Pure: complete when every non-bridge member is bound to vfio-pci (and there is at least one)."""
    ms = tuple(sorted(members, key=lambda m: m.address))
    missing = tuple(m.address for m in ms if not m.bridge and m.driver != VFIO_DRIVER)
    endpoints = sum(1 for m in ms if not m.bridge)
    return GroupStatus(group=group, members=ms, complete=endpoints > 0 and not missing, missing=missing)


def group_status(root: SysfsRoot, group: str) -> GroupStatus:
    """Read the members of /sys/kernel/iommu_groups/<group> and decide completeness."""
    if not group.isdigit():
        raise ValueError(f"invalid IOMMU group {group!r}")
    members = []
    for address in root.children(root.sys("kernel", "iommu_groups", group, "devices")):
        if not is_pci_address(address):
            continue
        dev = root.sys("bus", "pci", "devices", address)
        bridge = root.exists(dev + "/subordinate_bus_number") or root.exists(dev + "/pci_bus")
        members.append(GroupMember(address=address, driver=root.try_link_name(dev + "/driver"), bridge=bridge))
    return decide(group, members)
