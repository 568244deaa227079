"""PURE planning of the cluster controller: (claims, devices, nodes, now) -> actions. No I/O, no clock.

IOMMU-group completion (`completeGroups: auto`): a PCI claim older than the grace period whose group has unclaimed
members gets them claimed once, for the same owner, with its `spec.userName`; the UI's own "Enable Group" creates
every claim within the grace period, so then there is nothing to do. Every claim the controller has looked at (and
every claim it creates) carries the annotation SIBLINGS_ANNOTATION listing the siblings claimed for it, so it is
never a trigger again: a sibling its owner later releases is not re-created. `warn` plans nothing.

Janitor: claims of nodes that no longer exist are deleted and lose the agent's finalizer (no agent will ever
release them); their device objects follow through the garbage collector (ownerReferences to the Node).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy import names
from policy.objects import FINALIZER_AGENT, MalformedObject, PCIDevice

SIBLINGS_ANNOTATION = f"{names.GROUP}/siblings-claimed"
AUTO, WARN = "auto", "warn"


@dataclass(frozen=True, slots=True)
class ClaimFacts:
    kind: str  # "PCIDeviceClaim" or "USBDeviceClaim"
    name: str
    uid: str
    owner: str
    user_name: str
    node: str
    address: str
    created: datetime.datetime | None
    finalizers: tuple[str, ...]
    deleting: bool
    siblings_done: bool

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ClaimFacts:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        annotations = meta.get("annotations") or {}
        labels = meta.get("labels") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedObject("metadata.name must be a non-empty string")
        node = spec.get("nodeName") or status.get("nodeName") or labels.get(names.LABEL_NODENAME) or ""
        return cls(
            kind=str(obj.get("kind") or ""),
            name=name,
            uid=str(meta.get("uid") or ""),
            owner=str(annotations.get(names.ANNOTATION_REQUESTED_BY) or ""),
            user_name=str(spec.get("userName") or ""),
            node=str(node),
            address=str(spec.get("address") or ""),
            created=_time(meta.get("creationTimestamp")),
            finalizers=tuple(f for f in meta.get("finalizers") or () if isinstance(f, str)),
            deleting=meta.get("deletionTimestamp") is not None,
            siblings_done=SIBLINGS_ANNOTATION in annotations,
        )


# -- actions ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateClaim:
    """Claim `device` for `owner` as an IOMMU sibling of `trigger`."""

    device: PCIDevice
    owner: str
    user_name: str
    trigger: str


@dataclass(frozen=True, slots=True)
class MarkSiblingsDone:
    claim: str
    siblings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeleteClaim:
    kind: str
    name: str
    node: str


@dataclass(frozen=True, slots=True)
class RemoveFinalizer:
    kind: str
    name: str
    node: str


Action = CreateClaim | MarkSiblingsDone | DeleteClaim | RemoveFinalizer


def plan_groups(
    claims: Iterable[ClaimFacts],
    devices: Iterable[PCIDevice],
    nodes: set[str],
    *,
    now: datetime.datetime,
    grace: datetime.timedelta,
    mode: str,
) -> list[Action]:
    if mode != AUTO:
        return []
    pci_claims = {c.name: c for c in claims if c.kind == "PCIDeviceClaim"}
    by_name = {d.name: d for d in devices}
    by_address = {(d.node_name, d.address): d for d in by_name.values()}
    planned: set[str] = set()
    actions: list[Action] = []
    for claim in sorted(pci_claims.values(), key=lambda c: (c.created or now, c.name)):
        if claim.siblings_done or claim.deleting or not claim.owner or claim.name in planned:
            continue
        if claim.created is None or claim.created + grace > now:
            continue
        device = by_name.get(claim.name)
        if device is None or not device.iommu_group or device.node_name not in nodes:
            continue
        siblings: list[PCIDevice] = []
        for member in device.iommu_group_members:
            if member.bridge or member.address == device.address:
                continue
            sibling = by_address.get((device.node_name, member.address))
            if sibling is None or sibling.host_critical or sibling.absent:
                continue
            if sibling.name in pci_claims or sibling.name in planned:
                continue
            siblings.append(sibling)
        for sibling in siblings:
            planned.add(sibling.name)
            actions.append(CreateClaim(sibling, claim.owner, claim.user_name or claim.owner, claim.name))
        actions.append(MarkSiblingsDone(claim.name, tuple(s.name for s in siblings)))
    return actions


def plan_janitor(claims: Iterable[ClaimFacts], nodes: set[str]) -> list[Action]:
    """Claims whose node is gone: delete, then drop the agent's finalizer. An empty node list plans nothing (a
    cluster without nodes is far likelier a failed read than the truth)."""
    if not nodes:
        return []
    actions: list[Action] = []
    for claim in claims:
        if not claim.node or claim.node in nodes:
            continue
        if not claim.deleting:
            actions.append(DeleteClaim(claim.kind, claim.name, claim.node))
        if FINALIZER_AGENT in claim.finalizers:
            actions.append(RemoveFinalizer(claim.kind, claim.name, claim.node))
    return actions


def build_claim(action: CreateClaim) -> dict[str, Any]:
    """The PCIDeviceClaim the controller creates for a sibling, shaped like the UI's (plus the owner)."""
    d = action.device
    return {
        "apiVersion": names.API_VERSION,
        "kind": "PCIDeviceClaim",
        "metadata": {
            "name": d.name,
            "annotations": {names.ANNOTATION_REQUESTED_BY: action.owner, SIBLINGS_ANNOTATION: ""},
            "labels": {names.LABEL_NODENAME: d.node_name},
            "ownerReferences": [{"apiVersion": names.API_VERSION, "kind": "PCIDevice", "name": d.name, "uid": d.uid}],
        },
        "spec": {
            "address": d.address,
            "nodeName": d.node_name,
            "userName": action.user_name,
            "disableResourcePooling": False,
        },
    }


def siblings_patch(action: MarkSiblingsDone) -> Sequence[Mapping[str, Any]]:
    key = SIBLINGS_ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/annotations/{key}", "value": ",".join(action.siblings)}]


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
