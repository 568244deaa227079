"""Decision values, controller-runtime style: allowed, denied (403), malformed (400) or patched.

The webhook turns a Decision into an AdmissionResponse; `rule` names the rule for logs and metrics only and is
never sent to the user (the message already says it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Hold:
    """A device an admitted object names exactly: the webhook makes its requester the device's one holder with a
    compare-and-swap in the API server before it answers (webhook.holds), so parallel requests cannot both pass a
    check made against an eventually consistent view."""

    device_kind: str  # "pcidevice" or "usbdevice"
    device: str
    requester: str  # the username the device is held for (VMs of one requester share it)
    workload: str  # what asks, for messages: "virtualmachine ns/name"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    code: int = 200
    reason: str = ""
    message: str = ""
    rule: str = ""
    warnings: tuple[str, ...] = ()
    patch: tuple[Mapping[str, Any], ...] = ()  # RFC 6902 operations
    holds: tuple[Hold, ...] = ()  # to take before the answer is sent (validating only)


def allow(warnings: Iterable[str] = (), *, holds: Iterable[Hold] = ()) -> Decision:
    return Decision(allowed=True, warnings=tuple(warnings), holds=tuple(holds))


def deny(rule: str, message: str, code: int = 403, reason: str = "Forbidden") -> Decision:
    return Decision(allowed=False, code=code, reason=reason, message=message, rule=rule)


def malformed(message: str, rule: str = "malformed") -> Decision:
    """A request the policy cannot judge because its content is not shaped as it must be (400)."""
    return Decision(allowed=False, code=400, reason="BadRequest", message=message, rule=rule)


def patched(ops: Iterable[Mapping[str, Any]], warnings: Iterable[str] = ()) -> Decision:
    return Decision(allowed=True, patch=tuple(ops), warnings=tuple(warnings))
