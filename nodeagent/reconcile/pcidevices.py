"""PCIDevice objects of this node: discovery's objects with the effective resource name of claimed devices whose name
is offered (until the offering gate lets a claim's name out, its device keeps the pooled name)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from nodeagent.discovery import PCIDevice
from nodeagent.reconcile import plan

Obj = dict[str, Any]


def build_desired(
    found: Sequence[PCIDevice], resource_names: Mapping[str, str], *, observe_only: bool = False
) -> dict[str, Obj]:
    """Objects by name; a claimed device carries the name it is offered under (`resource_names`, by object name),
    and every device of a node in observe mode says so (`observeOnly`, which the webhook warns about)."""
    out: dict[str, Obj] = {}
    for d in found:
        name = d["metadata"]["name"]
        obj: Obj = dict(d)
        if name in resource_names:
            obj["status"] = dict(d["status"], resourceName=resource_names[name])
        if observe_only:
            obj["status"] = dict(obj["status"], observeOnly=True)
        out[name] = obj
    return out


def plan_pcidevices(
    found: Sequence[PCIDevice],
    existing: Mapping[str, Obj],
    claimed: Mapping[str, str],
    *,
    node: str,
    owner: Obj | None,
    now: str = "",
    observe_only: bool = False,
    offered: Set[str] | None = None,
) -> list[plan.DeviceAction]:
    """`claimed`: object name -> effective resource name for every live or releasing claim of this node; `offered`:
    the claims whose name was offered (None: all), the only ones whose device carries that name."""
    names = claimed if offered is None else {k: v for k, v in claimed.items() if k in offered}
    return plan.plan_devices(
        build_desired(found, names, observe_only=observe_only),
        existing,
        set(claimed),
        node=node,
        owner=owner,
        owned_keys=plan.PCI_STATUS_KEYS,
        now=now,
    )
