"""USBDevice objects of this node: discovery's objects with `enabled` true while a live claim holds them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any

from nodeagent.discovery import USBDevice
from nodeagent.reconcile import plan

Obj = dict[str, Any]


def plan_usbdevices(
    found: Sequence[USBDevice],
    existing: Mapping[str, Obj],
    claimed: Set[str],
    enabled: Set[str],
    *,
    node: str,
    owner: Obj | None,
    now: str = "",
) -> list[plan.DeviceAction]:
    """`claimed`: names with a claim (live or releasing) — kept when gone; `enabled`: names with a live claim."""
    desired: dict[str, Obj] = {}
    for d in found:
        name = d["metadata"]["name"]
        desired[name] = dict(d, status=dict(d["status"], enabled=name in enabled))
    return plan.plan_devices(
        desired, existing, claimed, node=node, owner=owner, owned_keys=plan.USB_STATUS_KEYS, usb=True, now=now
    )
