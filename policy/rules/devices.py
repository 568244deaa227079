"""Rules shared by the device objects (PCIDevice, USBDevice): who may write them (A10, A10u) and when they may be
deleted (A8).

Writers: the agent of the device's node, the garbage collector, the takeover and cluster-admins. An agent's object
is judged by its name recomputed from the agent's node and the object's own identity fields (address, or USB ids
and bus/device numbers), by the `nodename` label and by status.nodeName; never by a prefix of the name, since node
names contain `-`. On CREATE the API server has already dropped status (status subresource), so the name must then
have the exact shape `<agent's node>-<suffix>`, and the first status write pins the suffix to the identity fields.

A8: a claimed device is never deleted, not even by its agent or a cluster-admin, while its node exists; the agent
marks a vanished claimed device absent instead (an UPDATE, allowed), so garbage collection cannot take the claim.
The takeover identity may write device objects too (it cleans upstream's leftover annotations).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import decision, messages, names
from policy.decision import Decision
from policy.objects import Claim, Device, MalformedObject, PCIDevice
from policy.rules.context import Context
from policy.rules.identity import Role


@dataclass(frozen=True, slots=True)
class DeviceKind:
    kind: str  # "pcidevice"
    claim_kind: str  # "pcideviceclaim"
    parse: Callable[[object], Device]
    lookup: Callable[[Context, str], Device | None]
    claim_of: Callable[[Context, str], Claim | None]
    name_suffix: re.Pattern[str]  # what follows "<node>-" in an object name
    check_fields: Callable[[Device], Decision | None]  # A11 and friends on the identity fields
    expected_name: Callable[[str, Device], tuple[str, str, str] | None]  # (name, what, value) or None if unknown


def validate(ctx: Context, dk: DeviceKind) -> Decision:
    op = ctx.request.operation
    if op == "CREATE":
        return _validate_write(ctx, dk, old_obj=None)
    if op == "UPDATE":
        old = ctx.old()
        if isinstance(old, Decision):
            return old
        return _validate_write(ctx, dk, old_obj=old)
    if op == "DELETE":
        return _validate_delete(ctx, dk)
    return decision.allow()


def _parse(ctx: Context, dk: DeviceKind, obj: Mapping[str, Any]) -> Device | Decision:
    try:
        return dk.parse(obj)
    except MalformedObject as e:
        return decision.malformed(
            messages.MALFORMED_OBJECT.format(kind=dk.kind, name=messages.shown(ctx.request.name), problem=e)
        )


def _validate_write(ctx: Context, dk: DeviceKind, old_obj: Mapping[str, Any] | None) -> Decision:
    new_obj = ctx.new()
    if isinstance(new_obj, Decision):
        return new_obj
    new = _parse(ctx, dk, new_obj)
    if isinstance(new, Decision):
        return new
    old = _parse(ctx, dk, old_obj) if old_obj is not None else None
    if isinstance(old, Decision):
        return old
    denial = dk.check_fields(new)
    if denial is not None:
        return denial
    role = ctx.identity.role
    if role is Role.AGENT:
        for device in (old, new):
            if device is not None:
                denial = _check_agent_object(ctx, dk, device)
                if denial is not None:
                    return denial
        return _check_agent_names(ctx, dk, new) or decision.allow()
    if role in (Role.GC, Role.MIGRATION) or ctx.is_cluster_admin():
        return decision.allow()
    verb = "created" if old is None else "changed"
    return _writer_denial(ctx, dk, new.name, verb)


def _validate_delete(ctx: Context, dk: DeviceKind) -> Decision:
    name = ctx.request.name
    device: Device | None
    if ctx.request.old_object is not None:
        parsed = _parse(ctx, dk, ctx.request.old_object)
        if isinstance(parsed, Decision):
            return parsed
        device = parsed
    else:
        device = dk.lookup(ctx, name)
    if device is None:
        return decision.allow()
    role = ctx.identity.role
    if role is Role.AGENT:
        denial = _check_agent_object(ctx, dk, device)
        if denial is not None:
            return denial
    elif role not in (Role.GC, Role.MIGRATION) and not ctx.is_cluster_admin():
        return _writer_denial(ctx, dk, device.name, "deleted")
    node = device.node_name or device.label_node
    claim = dk.claim_of(ctx, device.name)
    if claim is not None and not ctx.node_gone(node):
        return decision.deny(
            "A8",
            messages.DEVICE_DELETE_CLAIMED.format(
                kind=dk.kind,
                name=messages.shown(device.name),
                node=messages.shown(node),
                claim_kind=dk.claim_kind,
                owner=messages.shown(claim.owner),
            ),
        )
    return decision.allow()


def _writer_denial(ctx: Context, dk: DeviceKind, name: str, verb: str) -> Decision:
    return decision.deny(
        "A10u",
        messages.DEVICE_WRITER.format(
            kind=dk.kind, name=messages.shown(name), verb=verb, user=ctx.user, claim_kind=dk.claim_kind
        ),
    )


def _check_agent_object(ctx: Context, dk: DeviceKind, device: Device) -> Decision | None:
    """A10: the object belongs to the agent's node by label, status and recomputed name."""
    node = ctx.identity.node or ""
    f = {"kind": dk.kind, "name": messages.shown(device.name), "user": ctx.user, "agent_node": messages.shown(node)}
    for field, value in (("label nodename", device.label_node), ("status.nodeName", device.node_name)):
        if (value or field.startswith("label")) and value != node:
            return decision.deny("A10", messages.AGENT_NODE_FIELD.format(**f, field=field, value=messages.shown(value)))
    expected = dk.expected_name(node, device)
    if expected is not None:
        expected_name, what, value = expected
        if expected_name == device.name:
            return None
        return decision.deny(
            "A10",
            messages.AGENT_NAME_MISMATCH.format(
                **f, what=what, value=messages.shown(value), expected=messages.shown(expected_name)
            ),
        )
    prefix = node + "-"
    if device.name.startswith(prefix) and dk.name_suffix.fullmatch(device.name[len(prefix) :]):
        return None
    form = prefix + ("<address without : and .>" if dk.kind == "pcidevice" else "<vendor>-<product>-<bus><device>")
    return decision.deny("A10", messages.AGENT_NAME_FORM.format(**f, expected=messages.shown(form)))


def _check_agent_names(ctx: Context, dk: DeviceKind, device: Device) -> Decision | None:
    """A10, names are node-bound: an agent offers its device only under the device's own per-device name or its
    model's pooled name, never under a name of another node's device (the view would take them for one pool)."""
    if isinstance(device, PCIDevice):
        pooled = device.pooled_resource_name
        if pooled and not names.is_pooled_shape(pooled):
            return _name_denial(ctx, dk, device, "status.pooledResourceName", pooled, "<vendor>.com/<PRODUCT>")
        if not names.pci_may_carry(device.name, pooled, device.resource_name):
            own = names.per_device_name_from(pooled, device.name) if pooled else f"<vendor>/{device.name}"
            return _name_denial(ctx, dk, device, "status.resourceName", device.resource_name,
                                f"{own} or {pooled or 'its pooled name'}")  # fmt: skip
    elif not names.usb_may_carry(device.name, device.resource_name):
        return _name_denial(
            ctx, dk, device, "status.resourceName", device.resource_name, names.usb_resource_name(device.name)
        )
    return None


def _name_denial(ctx: Context, dk: DeviceKind, device: Device, field: str, value: str, allowed: str) -> Decision:
    return decision.deny(
        "A10",
        messages.AGENT_RESOURCE_NAME.format(
            kind=dk.kind,
            name=messages.shown(device.name),
            user=ctx.user,
            field=field,
            value=messages.shown(value),
            allowed=messages.shown(allowed),
        ),
    )


def bad_field(kind: str, name: str, field: str, form: str, value: object) -> Decision:
    return decision.deny(
        "A11",
        messages.BAD_USB_FIELD.format(
            kind=kind, name=messages.shown(name), field=field, form=form, value=messages.shown(value)
        ),
    )


def bad_address(kind: str, name: str, field: str, value: object) -> Decision:
    return decision.deny(
        "A11",
        messages.BAD_ADDRESS.format(kind=kind, name=messages.shown(name), field=field, value=messages.shown(value)),
    )
