"""Pure answers to the kubelet: the advertised device list, GetPreferredAllocation and Allocate.

No I/O and no gRPC here (an import-linter contract keeps it so): the servicer turns these values into protobuf
messages, and the health probe has already turned the host's state into the `Snapshot` these functions read.
KubeVirt's contract (docs/deviceplugin.md): PCI gets /dev/vfio/vfio and /dev/vfio/<group> (plus /dev/iommu and
/dev/vfio/devices/vfioN when the iommufd cdev exists) and PCI_RESOURCE_<NAME>=<addr>,<addr>; USB gets its
/dev/bus/usb/BBB/DDD node and USB_RESOURCE_<NAME>=<bus>:<devnum>.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodeagent.deviceplugin import errors, model
from policy import names

PERMISSIONS = "mrw"


@dataclass(frozen=True)
class ListedDevice:
    """One entry of a ListAndWatch answer; numa_node None means the topology is omitted (not -1)."""

    id: str
    healthy: bool
    numa_node: int | None = None


@dataclass(frozen=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = PERMISSIONS


@dataclass(frozen=True)
class ContainerAllocation:
    envs: Mapping[str, str]
    devices: tuple[DeviceSpec, ...]


def build_device_list(snapshot: model.Snapshot) -> tuple[ListedDevice, ...]:
    """The whole list the kubelet gets on every change; capacity = all, allocatable = healthy ones."""
    if isinstance(snapshot, model.UsbSnapshot):
        s = snapshot.state
        return (ListedDevice(s.device.id, s.healthy),)
    return tuple(ListedDevice(s.device.id, s.healthy, s.device.numa_node) for s in snapshot.states)


def _unique(ids: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)


def build_allocation(snapshot: model.Snapshot, device_ids: Sequence[str]) -> ContainerAllocation:
    """Allocate answer for one container; raise UnknownDevice/UnhealthyDevice naming the offending ids."""
    ids = _unique(device_ids)
    if not ids:
        raise errors.AllocationError(f"resource {snapshot.resource_name}: allocate request names no device")
    if isinstance(snapshot, model.UsbSnapshot):
        return _usb_allocation(snapshot, ids)
    return _pci_allocation(snapshot, ids)


def _check(resource: str, ids: list[str], states: Mapping[str, model.PciState | model.UsbState]) -> None:
    unknown = [i for i in ids if i not in states]
    if unknown:
        raise errors.UnknownDevice(
            f"resource {resource} has no device {', '.join(unknown)}; it serves {', '.join(sorted(states))}"
        )
    unhealthy = [i for i in ids if not states[i].healthy]
    if unhealthy:
        why = "; ".join(f"{i}: {states[i].reason or 'unhealthy'}" for i in unhealthy)
        raise errors.UnhealthyDevice(f"resource {resource}: device not usable for passthrough ({why})")


def _pci_allocation(snapshot: model.PciSnapshot, ids: list[str]) -> ContainerAllocation:
    states = {s.device.id: s for s in snapshot.states}
    _check(snapshot.resource_name, ids, states)
    paths = ["/dev/vfio/vfio"]
    groups = _unique(f"/dev/vfio/{states[i].device.iommu_group}" for i in ids)
    paths.extend(groups)
    cdevs = [states[i].vfio_cdev for i in ids]
    if snapshot.iommufd and any(cdevs):
        paths.append("/dev/iommu")
        paths.extend(_unique(f"/dev/vfio/devices/{c}" for c in cdevs if c))
    env = names.pci_resource_env_var(snapshot.resource_name)
    return ContainerAllocation(
        envs={env: ",".join(ids)},
        devices=tuple(DeviceSpec(p, p) for p in paths),
    )


def _usb_allocation(snapshot: model.UsbSnapshot, ids: list[str]) -> ContainerAllocation:
    s = snapshot.state
    _check(snapshot.resource_name, ids, {s.device.id: s})
    env = names.usb_resource_env_var(snapshot.resource_name)
    d = s.device
    return ContainerAllocation(
        envs={env: f"{d.bus}:{d.devnum}"},
        devices=(DeviceSpec(d.dev_path, d.dev_path),),
    )


# -- GetPreferredAllocation ------------------------------------------------------------------------------------


def plan_preferred(
    snapshot: model.Snapshot, available: Sequence[str], must_include: Sequence[str], size: int
) -> tuple[str, ...]:
    """Exactly `size` ids: all of must_include, whole IOMMU groups where possible, one NUMA node where possible.

    Order of preference: (1) whole groups on the NUMA node of the must-include devices (or any single node),
    (2) whole groups across nodes, (3) whatever completes the count, nearest first. Ties go to the lowest address,
    so the answer is deterministic. Returns fewer ids only when fewer are available.
    """
    must = _unique(must_include)
    if size <= len(must):
        return tuple(must[:size]) if size > 0 else ()
    if isinstance(snapshot, model.UsbSnapshot):
        return tuple(_unique([*must, *available])[:size])
    known = {s.device.id: s.device for s in snapshot.states}
    pool = sorted(i for i in _unique([*available, *must]) if i in known)
    extra_unknown = [i for i in _unique(available) if i not in known and i not in must]
    group_of = {i: known[i].iommu_group for i in pool}
    numa_of = {i: known[i].numa_node for i in pool}

    # Units are IOMMU groups restricted to what the kubelet offers; the groups of must-include ids are taken whole.
    units: dict[int, list[str]] = {}
    for i in pool:
        units.setdefault(group_of[i], []).append(i)
    chosen: list[str] = list(must)
    must_groups = {group_of[i] for i in must if i in group_of}
    for g in sorted(must_groups):
        chosen.extend(i for i in units[g] if i not in chosen)
    optional = {g: ids for g, ids in units.items() if g not in must_groups}
    need = size - len(chosen)
    if need < 0:  # a must-include group is bigger than the request: keep must first, then its group siblings
        return tuple(chosen[:size])

    must_nodes = {n for i in must if (n := numa_of.get(i)) is not None}
    counts: dict[int, int] = {}
    for i in pool:
        if (n := numa_of[i]) is not None:
            counts[n] = counts.get(n, 0) + 1
    node_order = sorted(counts, key=lambda n: (n not in must_nodes, -counts[n], n))

    def on_node(ids: list[str], node: int) -> bool:
        return all(numa_of[i] == node for i in ids)

    for node in node_order:
        if must_nodes and must_nodes != {node}:
            continue
        picked = _subset_of_groups({g: ids for g, ids in optional.items() if on_node(ids, node)}, need)
        if picked is not None:
            return tuple(sorted([*chosen, *picked]))
    picked = _subset_of_groups(optional, need)
    if picked is not None:
        return tuple(sorted([*chosen, *picked]))

    # No exact cover with whole groups: fill device by device, same NUMA node as the first chosen device first.
    home = next((numa_of[i] for i in chosen if numa_of.get(i) is not None), None)
    rest = [i for i in pool if i not in chosen]
    rest.sort(key=lambda i: (numa_of[i] != home, -len(units[group_of[i]]), i))
    filled = [*chosen, *rest, *extra_unknown][:size]
    return tuple(sorted(filled))


def _subset_of_groups(groups: Mapping[int, list[str]], need: int) -> list[str] | None:
    """Whole groups whose sizes add up to exactly `need` (fewest groups, then lowest addresses), or None."""
    if need == 0:
        return []
    order = sorted(groups, key=lambda g: min(groups[g]))
    # best[s] = chosen group list reaching total s; 0/1 knapsack over groups, keeping the first (lowest) solution.
    best: dict[int, tuple[int, ...]] = {0: ()}
    for g in order:
        k = len(groups[g])
        for total, combo in sorted(best.items(), reverse=True):
            t = total + k
            if t <= need and (t not in best or len(combo) + 1 < len(best[t])):
                best[t] = (*combo, g)
    if need not in best:
        return None
    return [i for g in best[need] for i in groups[g]]
