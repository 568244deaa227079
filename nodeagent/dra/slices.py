"""The node's ResourceSlices of one driver: planned from the published devices (pure), applied through a store.

One pool per node and driver, named like the node; devices sorted by name and cut into slices of at most 128
(resource.k8s.io/v1), named `<node>-pcidevices-<i>` (`usbdevices` for USB). Nothing is written while the slices on the
server already say exactly this; otherwise every slice of the pool is written with the next pool generation (the
scheduler uses only the newest generation) and slices beyond the count are deleted. A pool without devices has no
slice: the last claim's release deletes them. The kubelet deletes a node's slices of a driver whose plugin is gone;
the agent's watch of its slices makes the next pass write them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nodeagent.dra.model import PublishedDevice
from policy import dra, names

Obj = dict[str, Any]
MANAGED_BY = "pcidevices-agent"


@dataclass(frozen=True)
class SliceAction:
    verb: str  # "create", "update" or "delete"
    name: str
    body: Obj | None = None


class SliceStore(Protocol):
    """The calls a pass makes on ResourceSlices (the wiring adapts the API client)."""

    def list(self, node: str, driver: str) -> list[Obj]: ...
    def create(self, body: Obj) -> Obj: ...
    def update(self, name: str, body: Obj) -> Obj: ...
    def delete(self, name: str) -> None: ...


def labels(node: str) -> dict[str, str]:
    return {names.LABEL_NODENAME: node, "app.kubernetes.io/managed-by": MANAGED_BY}


def build_slices(
    node: str,
    driver: str,
    devices: Sequence[PublishedDevice],
    generation: int,
    owner: Mapping[str, Any] | None = None,
) -> list[Obj]:
    entries = [d.entry() for d in sorted(devices, key=lambda d: d.name) if d.driver == driver]
    chunks = [entries[i : i + dra.SLICE_DEVICE_LIMIT] for i in range(0, len(entries), dra.SLICE_DEVICE_LIMIT)]
    out = []
    for i, chunk in enumerate(chunks):
        meta: Obj = {"name": dra.slice_name(node, driver, i), "labels": labels(node)}
        if owner is not None:
            meta["ownerReferences"] = [dict(owner)]
        out.append(
            {
                "apiVersion": f"{dra.GROUP}/{dra.VERSION}",
                "kind": "ResourceSlice",
                "metadata": meta,
                "spec": {
                    "driver": driver,
                    "nodeName": node,
                    "pool": {"name": node, "generation": generation, "resourceSliceCount": len(chunks)},
                    "devices": chunk,
                },
            }
        )
    return out


def _same(have: Obj, want: Obj) -> bool:
    hs, ws = have.get("spec") or {}, want["spec"]
    hp, wp = hs.get("pool") or {}, ws["pool"]
    return bool(
        hs.get("driver") == ws["driver"]
        and hs.get("nodeName") == ws["nodeName"]
        and hp.get("name") == wp["name"]
        and hp.get("resourceSliceCount") == wp["resourceSliceCount"]
        and (hs.get("devices") or []) == ws["devices"]
    )


def plan_slices(
    node: str,
    driver: str,
    current: Sequence[Obj],
    devices: Sequence[PublishedDevice],
    owner: Mapping[str, Any] | None = None,
) -> list[SliceAction]:
    """What makes the server's slices of (node, driver) list exactly `devices`; [] when they already do."""
    have = {o["metadata"]["name"]: o for o in current}
    generations = [int(((o.get("spec") or {}).get("pool") or {}).get("generation") or 0) for o in current]
    generation = max(generations, default=0)
    want = build_slices(node, driver, devices, generation or 1, owner)
    same_generation = len(set(generations)) <= 1
    if (
        same_generation
        and set(have) == {w["metadata"]["name"] for w in want}
        and all(_same(have[w["metadata"]["name"]], w) for w in want)
    ):
        return []
    want = build_slices(node, driver, devices, generation + 1, owner)
    actions = []
    for w in want:
        name = w["metadata"]["name"]
        if name in have:
            body = dict(w)
            body["metadata"] = {**w["metadata"], "resourceVersion": have[name]["metadata"].get("resourceVersion")}
            actions.append(SliceAction("update", name, body))
        else:
            actions.append(SliceAction("create", name, w))
    wanted = {w["metadata"]["name"] for w in want}
    actions.extend(SliceAction("delete", name) for name in sorted(have) if name not in wanted)
    return actions


def apply_slices(store: SliceStore, actions: Sequence[SliceAction]) -> None:
    """Creates and updates first (the new generation complete), then deletes of slices beyond the count."""
    for a in actions:
        if a.verb == "create" and a.body is not None:
            store.create(a.body)
        elif a.verb == "update" and a.body is not None:
            store.update(a.name, a.body)
    for a in actions:
        if a.verb == "delete":
            store.delete(a.name)


def publish(
    store: SliceStore,
    node: str,
    driver: str,
    devices: Sequence[PublishedDevice],
    owner: Mapping[str, Any] | None = None,
) -> list[SliceAction]:
    """Observe, plan, apply for one driver; returns what was done."""
    actions = plan_slices(node, driver, store.list(node, driver), devices, owner)
    apply_slices(store, actions)
    return actions
