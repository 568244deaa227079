"""Undo upstream's `vfio-pci/new_id` entries on this node (the node-side half of the takeover).

Upstream bound claimed devices by writing `vendor device` to `/sys/bus/pci/drivers/vfio-pci/new_id`; that id stays
registered until `remove_id` or a reboot, so vfio-pci grabs every other unbound device with the same ids. The
kernel has no list of dynamic ids to read back, so they are derived: devices bound to vfio-pci without a
`driver_override` got there through an id match, and those that are claimed were bound by upstream. An id is
removed only when every device bound to vfio-pci that way with that id is claimed (an unclaimed one may be an
admin's own new_id, which we leave alone). `remove_id` never unbinds: bound devices stay bound.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Collection
from dataclasses import dataclass

from nodeagent.errors import SysfsError
from nodeagent.sysfs.root import SysfsRoot
from policy import names

log = logging.getLogger(__name__)

VFIO = "vfio-pci"


@dataclass(frozen=True, slots=True)
class IdBinding:
    """A device bound to vfio-pci through an id match (no driver_override)."""

    address: str
    vendor: str  # 4 lower-case hex digits, no 0x
    device: str


@dataclass(frozen=True, slots=True)
class DynIdPlan:
    remove: tuple[tuple[str, str], ...]  # (vendor, device) pairs to write to remove_id
    skipped: tuple[tuple[str, str, str], ...]  # (vendor, device, why)


def _hex(raw: str) -> str:
    return raw.strip().lower().removeprefix("0x")


def scan(root: SysfsRoot) -> list[IdBinding]:
    """Devices bound to vfio-pci whose driver_override is empty."""
    out: list[IdBinding] = []
    base = root.sys("bus", "pci", "devices")
    for address in root.children(base):
        if not names.is_pci_address(address):
            continue
        dev = f"{base}/{address}"
        try:
            driver = root.read_link(f"{dev}/driver").rsplit("/", 1)[-1]
        except SysfsError:
            continue  # no driver
        if driver != VFIO:
            continue
        try:
            override = root.read_attr(f"{dev}/driver_override")
        except SysfsError:
            override = ""
        if override and override != "(null)":
            continue
        out.append(IdBinding(address, _hex(root.read_attr(f"{dev}/vendor")), _hex(root.read_attr(f"{dev}/device"))))
    return out


def plan(bindings: Collection[IdBinding], claimed: Collection[str]) -> DynIdPlan:
    """Which ids to remove (pure): those whose id-bound devices are all claimed."""
    by_id: dict[tuple[str, str], list[str]] = {}
    for b in bindings:
        by_id.setdefault((b.vendor, b.device), []).append(b.address)
    remove: list[tuple[str, str]] = []
    skipped: list[tuple[str, str, str]] = []
    for ids, addresses in sorted(by_id.items()):
        unclaimed = sorted(a for a in addresses if a not in claimed)
        if not any(a in claimed for a in addresses):
            continue  # nothing of ours: not upstream's doing as far as we can tell
        if unclaimed:
            skipped.append((*ids, f"unclaimed devices bound the same way: {', '.join(unclaimed)}"))
        else:
            remove.append(ids)
    return DynIdPlan(tuple(remove), tuple(skipped))


def remove_ids(root: SysfsRoot, ids: Collection[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Write each pair to vfio-pci/remove_id; an id the kernel does not know (ENODEV) is already gone.

    Returns (vendor, device, outcome) with outcome `removed` or `not registered`.
    """
    out: list[tuple[str, str, str]] = []
    path = root.sys("bus", "pci", "drivers", VFIO, "remove_id")
    for vendor, device in ids:
        try:
            root.write_attr(path, f"{vendor} {device}")
            out.append((vendor, device, "removed"))
        except SysfsError as e:
            if e.errno != errno.ENODEV:
                raise
            out.append((vendor, device, "not registered"))
        log.info("vfio-pci dynamic id", extra={"vendor": vendor, "device": device, "outcome": out[-1][2]})
    return out
