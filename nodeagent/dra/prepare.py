"""The last gate (pure): what the kubelet may hand a claim's containers on this node, or why not.

The scheduler writes a claim's allocation from the ResourceSlices; nothing it does asks who made the claim. So before
the agent prepares anything it checks, for the devices of its driver allocated on its node: that each is one this
node publishes now (claimed with spec.offer: DRA and bound), that no result asks for adminAccess, that every
function of each device's IOMMU group is in the same allocation (a container with /dev/vfio/<group> holds the whole
group), and that the claim carries the admission record the webhook wrote. The requester's `use` on each device is
then asked of the API server (nodeagent.dra.driver), in the claim's namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.dra.model import PublishedDevice
from policy import records
from policy.records import Requester

NOT_THIS_CLAIM = "claim {claim} has uid {have}, not {want}: it was deleted and made again; the kubelet asks again"
NOTHING_ALLOCATED = "claim {claim} has no device of driver {driver} allocated on node {node}"
ADMIN_ACCESS = "claim {claim} asks for device {device} with adminAccess; a passthrough device is never shared"
NOT_PUBLISHED = (
    "claim {claim} was allocated device {device}, which node {node} does not offer through DRA now (its "
    "claim was released, or offers it through the device plugin); delete the pod and let the scheduler allocate again"
)
PARTIAL_GROUP = (
    "claim {claim} gets pcidevice {object} but not {missing} of the same IOMMU group {group}; a container given the "
    "group holds every function in it: ask for the whole group (allocationMode: All with a selector on iommuGroup, or "
    "one request per function)"
)
NO_RECORD = (
    "claim {claim} carries no {annotation} record: the admission webhook did not judge it (made before the webhook, "
    "or while it was not called); make the claim again"
)
UNUSABLE = "claim {claim} was allocated {device}, which cannot be handed out now: {why}; the kubelet asks again"
NO_USE = (
    "claim {claim} was made by {user}, who lacks the verb use on {resource} {device} in namespace {namespace}; the "
    "device is not prepared"
)


@dataclass(frozen=True)
class Refusal:
    message: str


@dataclass(frozen=True)
class PreparePlan:
    requester: Requester
    devices: tuple[tuple[PublishedDevice, tuple[str, ...]], ...]  # each device with the requests it serves
    pods: tuple[str, ...]  # "<namespace>/<name>" the claim is reserved for


def _results(claim: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    return [r for r in results if isinstance(r, Mapping)]


def plan_prepare(
    claim: Mapping[str, Any],
    *,
    uid: str,
    driver: str,
    node: str,
    published: Mapping[str, PublishedDevice],
) -> PreparePlan | Refusal:
    meta = claim.get("metadata") or {}
    shown = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    if meta.get("uid") != uid:
        return Refusal(NOT_THIS_CLAIM.format(claim=shown, have=meta.get("uid"), want=uid))
    mine: dict[str, list[str]] = {}
    for r in _results(claim):
        if r.get("driver") != driver or r.get("pool") != node:
            continue
        device = str(r.get("device", ""))
        if r.get("adminAccess"):
            return Refusal(ADMIN_ACCESS.format(claim=shown, device=device))
        mine.setdefault(device, []).append(str(r.get("request", "")))
    if not mine:
        return Refusal(NOTHING_ALLOCATED.format(claim=shown, driver=driver, node=node))
    devices: list[tuple[PublishedDevice, tuple[str, ...]]] = []
    for name in sorted(mine):
        d = published.get(name)
        if d is None:
            return Refusal(NOT_PUBLISHED.format(claim=shown, device=name, node=node))
        devices.append((d, tuple(sorted(set(mine[name])))))
    addresses = {d.address for d, _ in devices if d.address}
    for d, _ in devices:
        missing = [a for a in d.group_functions if a not in addresses]
        if d.address and missing:
            return Refusal(
                PARTIAL_GROUP.format(claim=shown, object=d.object_name, missing=", ".join(missing), group=d.iommu_group)
            )
    requester = Requester.decode((meta.get("annotations") or {}).get(records.ANNOTATION))
    if requester is None:
        return Refusal(NO_RECORD.format(claim=shown, annotation=records.ANNOTATION))
    pods = tuple(
        sorted(
            f"{meta.get('namespace', '')}/{r.get('name', '')}"
            for r in (claim.get("status") or {}).get("reservedFor") or []
            if isinstance(r, Mapping) and r.get("resource") == "pods"
        )
    )
    return PreparePlan(requester, tuple(devices), pods)
