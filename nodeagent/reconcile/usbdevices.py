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
    observe_only: bool = False,
) -> list[plan.DeviceAction]:
    """`claimed`: names with a claim (live or releasing) — kept when gone; `enabled`: names with a live claim.
    In observe mode no device is enabled (its node is never chowned for QEMU) and every one says `observeOnly`."""
    desired: dict[str, Obj] = {}
    for d in found:
        name = d["metadata"]["name"]
        status = dict(d["status"], enabled=name in enabled and not observe_only)
        if observe_only:
            status["observeOnly"] = True
        desired[name] = dict(d, status=status)
    return plan.plan_devices(
        desired, existing, claimed, node=node, owner=owner, owned_keys=plan.USB_STATUS_KEYS, usb=True, now=now
    )
