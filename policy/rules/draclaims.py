"""What ResourceClaims and ResourceClaimTemplates may ask of our DRA drivers (rules D1-D6, docs/rules.md).

A request may reach our devices when neither its DeviceClass (an unknown class counts as any) nor its own selectors
pin another driver (`device.driver == "..."`). Such a request is either

- **pinned** (policy.dra.pins): it names devices by `pciDevice`, `pciAddress` (optionally with `node`) or
  `usbDevice`. Every device it can resolve to is judged now: it exists (D2), is claimed (D3) and offered through DRA
  (D4: one path at a time), its requester has `use` on it in the claim's namespace (D5), and every other function of
  its IOMMU group is pinned by the same claim (D6, bridges exempt); or
- **broad**: the mutating webhook adds `dra.owner_selector(requester)` for the drivers it may reach, so it resolves
  only to devices the requester owns, and the requester needs `use` on each of those in the namespace (D5). A broad
  request without that selector is refused (D1). Devices claimed later are judged again on the node: the agent
  prepares a device only for a claim whose recorded requester may use it (the last gate).

`adminAccess` never reaches our devices (D0): a passthrough device is never shared.

Order of checks: D0, then per request D1 (broad) or D2-D5 (pinned), then D6 over the whole claim; first violation
wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy import decision, dra, messages, names, records
from policy.decision import Decision
from policy.objects import Device, MalformedObject, PCIDevice, PCIDeviceClaim, USBDevice
from policy.records import Requester
from policy.rules.context import Context

RESOURCE_CLAIM = "ResourceClaim"
RESOURCE_CLAIM_TEMPLATE = "ResourceClaimTemplate"
POD_CLAIM_NAME = "resource.kubernetes.io/pod-claim-name"  # the resource claim controller marks what it makes


@dataclass
class Judged:
    """What a claim spec asks of our drivers."""

    ours: bool = False  # some request may reach our devices
    narrow: dict[int, tuple[dra.DeviceRequest, frozenset[str]]] = field(default_factory=dict)  # broad requests
    pinned: dict[str, Device] = field(default_factory=dict)  # every device a pinned request may get, by name
    warnings: list[str] = field(default_factory=list)


def reachable(ctx: Context, req: dra.DeviceRequest) -> tuple[frozenset[str], dra.Pins]:
    """Our drivers the request may get devices of, and what its class and selectors pin together."""
    cls = ctx.view.device_class(req.device_class) if req.device_class else None
    pins = (cls.pins if cls is not None else dra.Pins()).merged(dra.all_pins(req.selectors))
    if len(pins.drivers) > 1:
        return frozenset(), pins  # two drivers pinned: it matches nothing
    drivers = frozenset(pins.drivers) if pins.drivers else frozenset(dra.DRIVERS)
    return drivers & frozenset(dra.DRIVERS), pins


def reaches_ours(ctx: Context, spec: object, subject: Mapping[str, str]) -> bool | Decision:
    """Whether some request of the spec may get devices of our drivers (no permission is asked)."""
    try:
        requests = dra.claim_requests(spec)
    except MalformedObject as e:
        return decision.malformed(messages.MALFORMED_OBJECT.format(**subject, problem=e))
    return any(reachable(ctx, req)[0] for req in requests)


def _pinned(ctx: Context, driver: str, pins: dra.Pins) -> tuple[list[Device], str] | None:
    """The devices a request pins for `driver` and how it pins them (for messages); None when it pins none."""
    view = ctx.view
    if driver == dra.PCI_DRIVER:
        by_name = pins.value(driver, dra.ATTR_PCI_DEVICE)
        by_address = pins.value(driver, dra.ATTR_PCI_ADDRESS)
        if by_name is None and by_address is None:
            return None
        node = pins.value(driver, dra.ATTR_NODE)
        found: list[Device] = []
        if by_name is not False and by_address is not False and node is not False:
            if isinstance(by_name, str):
                d = view.pcidevice(by_name)
                found = [d] if d is not None else []
            else:
                found = list(view.pcidevices_at_address(str(by_address)))
            if isinstance(by_address, str):
                found = [d for d in found if isinstance(d, PCIDevice) and d.address == by_address]
            if isinstance(node, str):
                found = [d for d in found if isinstance(d, PCIDevice) and d.node_name == node]
        shown = [f"{a} {messages.shown(v)}" for a, v in (("pciDevice", by_name), ("pciAddress", by_address),
                                                          ("node", node)) if isinstance(v, str)]
        return found, " and ".join(shown) or "contradicting values"
    by_name = pins.value(driver, dra.ATTR_USB_DEVICE)
    if by_name is None:
        return None
    usb = view.usbdevice(by_name) if isinstance(by_name, str) else None
    return ([usb] if usb is not None else []), (f"usbDevice {messages.shown(by_name)}" if by_name else "nothing")


def judge(
    ctx: Context, spec: object, *, kind: str, name: str, namespace: str, requester: Requester
) -> Judged | Decision:
    """Judge a ResourceClaimSpec for `requester` (the template's spec for templates)."""
    try:
        requests = dra.claim_requests(spec)
    except MalformedObject as e:
        return decision.malformed(messages.MALFORMED_OBJECT.format(kind=kind.lower(), name=name, problem=e))
    out = Judged()
    subject = {"kind": kind.lower(), "name": name}
    for i, req in enumerate(requests):
        drivers, pins = reachable(ctx, req)
        if not drivers:
            continue
        out.ours = True
        shown_req = messages.shown(req.name)
        if req.admin_access:
            return decision.deny(
                "D0", messages.DRA_ADMIN_ACCESS.format(**subject, request=shown_req, drivers=messages.listed(drivers))
            )
        broad: set[str] = set()
        for driver in sorted(drivers):
            found = _pinned(ctx, driver, pins)
            if found is None:
                broad.add(driver)
                continue
            devices, how = found
            device_kind = "pcidevice" if driver == dra.PCI_DRIVER else "usbdevice"
            if not devices:
                return decision.deny(
                    "D2",
                    messages.DRA_NO_DEVICE.format(
                        **subject,
                        request=shown_req,
                        pin=how,
                        device_kind=device_kind,
                        device_resource=device_kind + "s",
                    ),
                )
            for device in devices:
                denied = _pinned_device(ctx, subject, shown_req, device, namespace, requester)
                if denied is not None:
                    return denied
                out.pinned[device.name] = device
        if broad:
            out.narrow[i] = (req, frozenset(broad))
    if out.narrow:
        owned = _owned(ctx, frozenset().union(*(d for _, d in out.narrow.values())), requester)
        for req, drivers in out.narrow.values():
            for device in owned:
                if _driver_of(device) in drivers and not may_use(ctx, device, namespace, requester):
                    return _use_denial(subject, messages.shown(req.name), device, namespace, requester)
        if not owned:
            out.warnings.append(
                messages.WARN_DRA_NONE_OWNED.format(
                    **subject, drivers=messages.listed(dra.DRIVERS), user=messages.shown(requester.username)
                )
            )
        partial = sorted(d.name for d in owned if isinstance(d, PCIDevice) and len(_functions(d)) > 1)
        if partial:
            out.warnings.append(
                messages.WARN_DRA_PARTIAL_GROUPS.format(
                    **subject, user=messages.shown(requester.username), devices=messages.listed(partial)
                )
            )
    group = _group_denial(ctx, subject, out.pinned)
    return group if group is not None else out


def _pinned_device(
    ctx: Context, subject: Mapping[str, str], request: str, device: Device, namespace: str, requester: Requester
) -> Decision | None:
    device_kind = "pcidevice" if isinstance(device, PCIDevice) else "usbdevice"
    claim_kind = device_kind + "claim"
    claim = ctx.view.pcideviceclaim(device.name) if isinstance(device, PCIDevice) else ctx.view.usbdeviceclaim(
        device.name
    )
    shown = messages.shown(device.name)
    if claim is None:
        return decision.deny(
            "D3",
            messages.DRA_UNCLAIMED.format(
                **subject, request=request, device_kind=device_kind, device=shown, claim_kind=claim_kind
            ),
        )
    if claim.offer != dra.OFFER_DRA:
        return decision.deny(
            "D4", messages.DRA_ONE_PATH.format(**subject, claim_kind=claim_kind, device_kind=device_kind, device=shown)
        )
    if not may_use(ctx, device, namespace, requester):
        return _use_denial(subject, request, device, namespace, requester)
    return None


def may_use(ctx: Context, device: Device, namespace: str, requester: Requester) -> bool:
    s = ctx.settings
    if not s.enforce_use or requester.username in s.use_exempt_usernames:
        return True
    return ctx.access.allowed(
        requester.user_info(),
        verb="use",
        group=names.GROUP,
        resource="pcidevices" if isinstance(device, PCIDevice) else "usbdevices",
        name=device.name,
        namespace=namespace,
    )


def _use_denial(
    subject: Mapping[str, str], request: str, device: Device, namespace: str, requester: Requester
) -> Decision:
    return decision.deny(
        "D5",
        messages.DRA_USE.format(
            **subject,
            namespace=messages.shown(namespace),
            user=messages.shown(requester.username),
            device_resource="pcidevices" if isinstance(device, PCIDevice) else "usbdevices",
            device=messages.shown(device.name),
            request=request,
        ),
    )


def _driver_of(device: Device) -> str:
    return dra.PCI_DRIVER if isinstance(device, PCIDevice) else dra.USB_DRIVER


def _owned(ctx: Context, drivers: frozenset[str], requester: Requester) -> list[Device]:
    """The requester's claimed devices offered through DRA, of the given drivers (what a narrowed request may get)."""
    out: list[Device] = []
    for claim in ctx.view.claims_of_owner(requester.username):
        if claim.offer != dra.OFFER_DRA:
            continue
        device: PCIDevice | USBDevice | None
        if isinstance(claim, PCIDeviceClaim):
            device = ctx.view.pcidevice(claim.name) if dra.PCI_DRIVER in drivers else None
        else:
            device = ctx.view.usbdevice(claim.name) if dra.USB_DRIVER in drivers else None
        if device is not None:
            out.append(device)
    return out


def _functions(device: PCIDevice) -> list[str]:
    """The non-bridge members of a device's IOMMU group (itself included)."""
    return [a for a in (device.group_addresses or (device.address,)) if a not in device.bridge_addresses]


def _group_denial(ctx: Context, subject: Mapping[str, str], pinned: Mapping[str, Device]) -> Decision | None:
    """D6: every non-bridge function of a pinned device's IOMMU group is pinned by the same claim."""
    have = {(d.node_name, d.address) for d in pinned.values() if isinstance(d, PCIDevice)}
    for device in sorted((d for d in pinned.values() if isinstance(d, PCIDevice)), key=lambda d: d.name):
        for address in _functions(device):
            if (device.node_name, address) in have:
                continue
            member = ctx.view.pcidevice_by_address(device.node_name, address)
            group = messages.shown(device.iommu_group)
            node = messages.shown(device.node_name)
            if member is None:
                return decision.deny(
                    "D6",
                    messages.DRA_GROUP_UNKNOWN.format(
                        **subject, device=messages.shown(device.name), group=group, node=node,
                        address=messages.shown(address),
                    ),
                )
            return decision.deny(
                "D6",
                messages.DRA_GROUP_MEMBER.format(
                    **subject,
                    device=messages.shown(device.name),
                    group=group,
                    node=node,
                    member=messages.shown(member.name),
                    selector=dra.pin_selector(dra.PCI_DRIVER, dra.ATTR_PCI_DEVICE, member.name),
                ),
            )
    return None


# -- the narrowing selector -------------------------------------------------------------------------------------


def narrowing(requester: Requester, drivers: frozenset[str]) -> str:
    return dra.owner_selector(requester.username, sorted(drivers))


def not_narrowed(ctx: Context, subject: Mapping[str, str], judged: Judged, requester: Requester) -> Decision | None:
    """D1: a broad request carries the selector that narrows it to the requester's devices."""
    for req, drivers in judged.narrow.values():
        wanted = narrowing(requester, drivers)
        if wanted not in req.selectors:
            driver = sorted(drivers)[0]
            pin = dra.ATTR_PCI_DEVICE if driver == dra.PCI_DRIVER else dra.ATTR_USB_DEVICE
            return decision.deny(
                "D1",
                messages.DRA_NOT_NARROWED.format(
                    **subject,
                    drivers=messages.listed(drivers),
                    request=messages.shown(req.name),
                    selector=wanted,
                    resource=ctx.request.resource.resource,
                    example=dra.pin_selector(driver, pin, "<name>"),
                ),
            )
    return None


def narrowing_ops(spec: Mapping[str, Any], prefix: str, judged: Judged, requester: Requester) -> list[dict[str, Any]]:
    """JSON-patch operations that add the narrowing selector to every broad request that lacks it."""
    ops: list[dict[str, Any]] = []
    for req, drivers in judged.narrow.values():
        wanted = narrowing(requester, drivers)
        if wanted in req.selectors:
            continue
        selector = {"cel": {"expression": wanted}}
        pointer = f"{prefix}{req.pointer}/selectors"
        if req.has_selectors:
            ops.append({"op": "add", "path": f"{pointer}/-", "value": selector})
        else:
            ops.append({"op": "add", "path": pointer, "value": [selector]})
    return ops


# -- admission records ------------------------------------------------------------------------------------------


def record_at(obj: Mapping[str, Any] | None, path: Sequence[str] = ("metadata",)) -> str | None:
    """The admission record in the annotations at `path` (metadata, or a template's spec.metadata)."""
    cursor: Any = obj
    for key in path:
        cursor = cursor.get(key) if isinstance(cursor, Mapping) else None
    annotations = cursor.get("annotations") if isinstance(cursor, Mapping) else None
    value = annotations.get(records.ANNOTATION) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else None


def record_ops(obj: Mapping[str, Any], path: Sequence[str], expected: str | None) -> list[dict[str, Any]]:
    """Operations that make the record at `path` equal `expected` (None: absent)."""
    current = record_at(obj, path)
    if current == expected:
        return []
    base = "/" + "/".join(path)
    key = records.ANNOTATION.replace("~", "~0").replace("/", "~1")
    if expected is None:
        return [{"op": "remove", "path": f"{base}/annotations/{key}"}]
    cursor: Any = obj
    ops: list[dict[str, Any]] = []
    for i, k in enumerate(path):
        nxt = cursor.get(k) if isinstance(cursor, Mapping) else None
        if not isinstance(nxt, Mapping):
            ops.append({"op": "add", "path": "/" + "/".join(path[: i + 1]), "value": {}})
            nxt = {}
        cursor = nxt
    if not isinstance(cursor.get("annotations"), Mapping):
        ops.append({"op": "add", "path": f"{base}/annotations", "value": {records.ANNOTATION: expected}})
    else:
        ops.append({"op": "add", "path": f"{base}/annotations/{key}", "value": expected})
    return ops


def record_denial(subject: Mapping[str, str], value: str | None, expected: str | None) -> Decision:
    return decision.deny(
        "record",
        messages.RECORD_MISMATCH.format(
            **subject,
            annotation=records.ANNOTATION,
            value=messages.shown(value) if value is not None else "none",
            expected=messages.shown(expected) if expected is not None else "none",
        ),
    )
