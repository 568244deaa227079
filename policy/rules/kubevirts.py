"""KubeVirt CR rules (A10): a node agent may only add or remove entries of
spec.configuration.permittedHostDevices.pciHostDevices and .usb, and only

- add entries for resources claimed on its own node (externalResourceProvider: true, selecting the claimed device),
- remove entries no claimed device on another node needs.

Entries are compared as a multiset, so removing one of upstream's duplicated entries is always fine. Requests by
anyone but an agent pass: the webhook configuration sends only agents' updates here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from policy import decision, messages
from policy.decision import Decision
from policy.objects import PCIDevice, USBDevice
from policy.rules.context import Context
from policy.rules.identity import Role

SECTIONS = {"pciHostDevices": PCIDevice, "usb": USBDevice}
_VOLATILE_METADATA = ("resourceVersion", "managedFields", "generation")


def mutate(ctx: Context) -> Decision:
    return decision.allow()


def validate(ctx: Context) -> Decision:
    if ctx.identity.role is not Role.AGENT:
        return decision.allow()
    name = messages.shown(ctx.request.name)
    op = ctx.request.operation
    if op != "UPDATE":
        verb = {"CREATE": "created", "DELETE": "deleted"}.get(op, "connected to")
        return decision.deny("A10", messages.KUBEVIRT_OPERATION.format(name=name, verb=verb, user=ctx.user))
    new, old = ctx.new(), ctx.old()
    if isinstance(new, Decision):
        return new
    if isinstance(old, Decision):
        return old
    entries_old = _entries(old)
    entries_new = _entries(new)
    for entries in (entries_old, entries_new):
        if isinstance(entries, Decision):
            return entries
    assert not isinstance(entries_old, Decision) and not isinstance(entries_new, Decision)
    other = _other_changes(old, new)
    if other:
        return decision.deny("A10", messages.KUBEVIRT_OTHER_CHANGE.format(name=name, user=ctx.user, what=other))
    node = ctx.identity.node or ""
    for section in SECTIONS:
        before, after = entries_old[section], entries_new[section]
        for key in sorted((after - before).elements()):
            denial = _check_added(ctx, name, node, section, json.loads(key))
            if denial is not None:
                return denial
        still_named = {_resource(json.loads(k)) for k in after}
        for key in sorted((before - after).elements()):
            resource = _resource(json.loads(key))
            if resource in still_named:
                continue
            denial = _check_removed(ctx, name, node, section, resource)
            if denial is not None:
                return denial
    return decision.allow()


def _resource(entry: Mapping[str, Any]) -> str:
    value = entry.get("resourceName")
    return value if isinstance(value, str) else ""


def _check_added(ctx: Context, name: str, node: str, section: str, entry: Mapping[str, Any]) -> Decision | None:
    resource = _resource(entry)
    f = {"name": name, "node": messages.shown(node), "section": section, "resource": messages.shown(resource)}
    kind = SECTIONS[section]
    claimed = [d for d in ctx.view.claimed_devices_with_resource(resource) if isinstance(d, kind)]
    mine = [d for d in claimed if d.node_name == node]
    if not mine:
        why = "no device claimed on that node" if not claimed else "only devices claimed on other nodes"
        return decision.deny("A10", messages.KUBEVIRT_ADD.format(**f, why=why))
    if entry.get("externalResourceProvider") is not True:
        return decision.deny("A10", messages.KUBEVIRT_EXTERNAL.format(**f))
    expected = sorted({_selector(d) for d in mine})
    selector = _entry_selector(section, entry)
    if selector is not None and selector not in expected:
        return decision.deny(
            "A10",
            messages.KUBEVIRT_SELECTOR.format(
                **f, selector=messages.shown(selector), expected=messages.listed(expected)
            ),
        )
    return None


def _selector(device: PCIDevice | USBDevice) -> str:
    if isinstance(device, PCIDevice):
        return f"{device.vendor_id}:{device.device_id}".upper()
    return f"{device.vendor_id}:{device.product_id}".upper()


def _entry_selector(section: str, entry: Mapping[str, Any]) -> str | None:
    """The vendor:device an entry selects (upper-case, as KubeVirt compares it), or None when it names none."""
    if section == "pciHostDevices":
        value = entry.get("pciVendorSelector")
        return value.upper() if isinstance(value, str) else None
    selectors = entry.get("selectors")
    if isinstance(selectors, list) and len(selectors) == 1 and isinstance(selectors[0], Mapping):
        vendor, product = selectors[0].get("vendor"), selectors[0].get("product")
        if isinstance(vendor, str) and isinstance(product, str):
            return f"{vendor}:{product}".upper()
    return "(several or malformed selectors)" if selectors is not None else None


def _check_removed(ctx: Context, name: str, node: str, section: str, resource: str) -> Decision | None:
    kind = SECTIONS[section]
    needed = [
        d for d in ctx.view.claimed_devices_with_resource(resource) if isinstance(d, kind) and d.node_name != node
    ]
    if not needed:
        return None
    return decision.deny(
        "A10",
        messages.KUBEVIRT_REMOVE.format(
            name=name,
            section=section,
            resource=messages.shown(resource),
            devices=messages.listed(d.name for d in needed),
        ),
    )


def _permitted(obj: Mapping[str, Any]) -> Any:
    spec = obj.get("spec")
    conf = spec.get("configuration") if isinstance(spec, Mapping) else None
    return conf.get("permittedHostDevices") if isinstance(conf, Mapping) else None


def _entries(obj: Mapping[str, Any]) -> dict[str, Counter[str]] | Decision:
    permitted = _permitted(obj)
    out: dict[str, Counter[str]] = {}
    for section in SECTIONS:
        raw = permitted.get(section) if isinstance(permitted, Mapping) else None
        if raw is None:
            raw = []
        shaped = isinstance(raw, list) and all(
            isinstance(e, Mapping) and isinstance(e.get("resourceName", ""), str) for e in raw
        )
        if not shaped:
            return decision.malformed(
                messages.KUBEVIRT_MALFORMED.format(
                    name=messages.shown(_name(obj)),
                    field=f"spec.configuration.permittedHostDevices.{section}",
                    value=messages.shown(raw),
                )
            )
        out[section] = Counter(json.dumps(e, sort_keys=True, default=str) for e in raw)
    return out


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def _other_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Paths (top level, or under spec.configuration.permittedHostDevices) that changed besides the two lists."""
    a, b = _strip(old), _strip(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(changed)


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object flattened to comparable parts, without the two lists, status and server-managed metadata."""
    parts: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "status":
            continue
        if key == "metadata" and isinstance(value, Mapping):
            for mk, mv in value.items():
                if mk not in _VOLATILE_METADATA:
                    parts[f"metadata.{mk}"] = mv
        elif key == "spec" and isinstance(value, Mapping):
            for sk, sv in value.items():
                if sk == "configuration" and isinstance(sv, Mapping):
                    for ck, cv in sv.items():
                        if ck == "permittedHostDevices" and isinstance(cv, Mapping):
                            for pk, pv in cv.items():
                                if pk not in SECTIONS:
                                    parts[f"spec.configuration.permittedHostDevices.{pk}"] = pv
                        else:
                            parts[f"spec.configuration.{ck}"] = cv
                else:
                    parts[f"spec.{sk}"] = sv
        else:
            parts[key] = value
    return parts
