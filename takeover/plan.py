"""Taking over an upstream harvester/pcidevices installation: the plan, computed from observed objects (pure).

It may read policy (names, records, host devices) and nothing that does I/O; `takeover.command` observes and applies.

`plan(observed, settings)` returns what was found, the changes to make (each a JSON patch with a resourceVersion
test, or a delete) and the refusals. While anything is refused the whole takeover is refused: upstream-only
features (SR-IOV VFs, vGPU, MIG, claims that skip vfio binding) would have nobody maintaining them afterwards.
Running the plan of an already taken-over cluster yields no changes (idempotent).

Owner mapping. Upstream records only `spec.userName`, a display name the UI writes (`admin`, a Rancher user
name). Rancher authenticates its users to Kubernetes as the User object's `metadata.name` (`u-xxxxx`,
`user-xxxxx`), so the owner is the name of the one Rancher User whose `username` equals spec.userName, else of the
one User whose `displayName` equals it; no match or several matches give `legacy:<userName>`, which holders of
`claim` on the device may release (policy/rules/claims.py).

VMs. Upstream checked nobody's right to use a device, so the VMs that name a claimed device's current name are
grandfathered: the takeover records them (policy.records) with the names they already use (`adopted`), so their
next VMI passes the last gate for exactly those names; any other change of their devices is judged afresh. A record
found on a VM before the takeover was written by nobody the webhook trusts and is replaced or removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from policy import hostdevices, names, records
from policy.objects import FINALIZER_AGENT, MalformedObject

UPSTREAM_PCI_FINALIZER = "wrangler.cattle.io/PCIDeviceClaimOnRemove"
UPSTREAM_USB_FINALIZER = "wrangler.cattle.io/usbClaimClient-device-claim-remove"
UPSTREAM_NODE_FINALIZER = "wrangler.cattle.io/node-remove"
UPSTREAM_VMI_FINALIZER = "wrangler.cattle.io/virtual-machine-deletion"
SKIP_VFIO_ANNOTATION = "pcidevices.harvesterhci.io/skip-vfio-binding"
OVERRIDE_RESOURCE_NAME = "pcidevice.harvesterhci.io/override-resource-name"
UPSTREAM_NAMESPACE = "harvester-system"
UPSTREAM_WEBHOOKS = (
    ("admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", "pcidevices-validator"),
    ("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "pcidevices-mutator"),
)
UPSTREAM_SECRETS = ("pcidevices-webhook-ca", "pcidevices-webhook-tls")
OUR_CRDS = tuple(
    f"{plural}.{names.GROUP}" for plural in ("pcidevices", "pcideviceclaims", "usbdevices", "usbdeviceclaims")
)
CHART_NAME = "harvester-pcidevices-controller"
HELM_RELEASE_NAME = "meta.helm.sh/release-name"
HELM_RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"
HELM_MANAGED_BY = "app.kubernetes.io/managed-by"

Op = Literal["patch", "delete"]


@dataclass(frozen=True, slots=True)
class Target:
    """An object of the API: `api_version` is `v1` for the core group, else `group/version`."""

    api_version: str
    plural: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.plural}/{where}{self.name}"


@dataclass(frozen=True, slots=True)
class Change:
    target: Target
    op: Op
    why: str
    patch: tuple[Mapping[str, Any], ...] = ()  # JSON patch (RFC 6902) for op == "patch"


@dataclass(frozen=True, slots=True)
class AddonTarget:
    """Where the Addon should point: this project's chart repository, version and values (never spec.chart)."""

    repo: str
    version: str
    values: str


@dataclass(frozen=True, slots=True)
class TakeoverSettings:
    release_name: str = "pcidevices-controller"
    release_namespace: str = UPSTREAM_NAMESPACE
    addon: AddonTarget | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """Raw objects as listed (missing APIs are empty); `addon` is None when absent."""

    pci_claims: Sequence[Mapping[str, Any]] = ()
    usb_claims: Sequence[Mapping[str, Any]] = ()
    pci_devices: Sequence[Mapping[str, Any]] = ()
    users: Sequence[Mapping[str, Any]] = ()  # management.cattle.io/v3 User
    nodes: Sequence[Mapping[str, Any]] = ()
    vmis: Sequence[Mapping[str, Any]] = ()
    vms: Sequence[Mapping[str, Any]] = ()  # kubevirt.io VirtualMachines
    node_devices: Sequence[Mapping[str, Any]] = ()  # nodes.devices.harvesterhci.io
    webhook_configurations: Sequence[tuple[str, str]] = ()  # (plural, name) present
    secrets: Sequence[str] = ()  # names present in the upstream namespace
    crds: Sequence[Mapping[str, Any]] = ()  # our CRDs as they are
    kubevirts: Sequence[Mapping[str, Any]] = ()  # normally one; every one is repaired
    addon: Mapping[str, Any] | None = None
    # upstream-only kinds: plural -> objects (sriovnetworkdevices, sriovgpudevices, vgpudevices, migconfigurations)
    upstream_only: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    found: tuple[str, ...]
    changes: tuple[Change, ...]
    refusals: tuple[str, ...]

    @property
    def refused(self) -> bool:
        return bool(self.refusals)


# -- helpers ----------------------------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name", ""))


def _str_map(obj: Mapping[str, Any], key: str) -> Mapping[str, str]:
    v = _meta(obj).get(key)
    return v if isinstance(v, Mapping) else {}


def _finalizers(obj: Mapping[str, Any]) -> list[str]:
    v = _meta(obj).get("finalizers")
    return [f for f in v if isinstance(f, str)] if isinstance(v, list) else []


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = obj.get(key)
    return v if isinstance(v, Mapping) else {}


def _rv_test(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A test op on resourceVersion: the patch fails (and the next run re-plans) if the object changed meanwhile."""
    return {"op": "test", "path": "/metadata/resourceVersion", "value": str(_meta(obj).get("resourceVersion", ""))}


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _map_ops(obj: Mapping[str, Any], key: str, wanted: Mapping[str, str]) -> list[dict[str, Any]]:
    """Ops that set `wanted` entries in metadata.<key> (labels/annotations), keeping every other entry."""
    current = _meta(obj).get(key)
    if not isinstance(current, Mapping):
        return [{"op": "add", "path": f"/metadata/{key}", "value": dict(wanted)}]
    return [
        {"op": "add", "path": f"/metadata/{key}/{_pointer(k)}", "value": v}
        for k, v in wanted.items()
        if current.get(k) != v
    ]


# -- owners -----------------------------------------------------------------------------------------------------


def map_owner(user_name: str, users: Iterable[Mapping[str, Any]]) -> str:
    """The Kubernetes username for an upstream spec.userName (see the module docstring), else `legacy:<userName>`."""
    users = list(users)
    if user_name:
        for key in ("username", "displayName"):
            matches = {_name(u) for u in users if u.get(key) == user_name and _name(u)}
            if len(matches) == 1:
                return matches.pop()
            if len(matches) > 1:
                break  # ambiguous: do not guess
    return names.LEGACY_PREFIX + user_name


# -- refusals ---------------------------------------------------------------------------------------------------


def _in_use_upstream_only(plural: str, obj: Mapping[str, Any]) -> str | None:
    spec = _section(obj, "spec")
    where = f"{plural}/{_name(obj)}"
    if plural == "sriovnetworkdevices":
        vfs = spec.get("numVFs")
        if isinstance(vfs, int) and vfs > 0:
            return f"{where}: upstream created {vfs} SR-IOV VFs; nothing would maintain them (set numVFs to 0 first)"
        return None
    if spec.get("enabled") is True:
        what = {
            "sriovgpudevices": "SR-IOV GPU VFs are enabled",
            "vgpudevices": "a vGPU is enabled",
            "migconfigurations": "MIG instances are enabled",
        }.get(plural, "an upstream-only feature is enabled")
        return f"{where}: {what}; nothing would maintain it (disable it in upstream first)"
    return None


# -- the plan ---------------------------------------------------------------------------------------------------


def plan(observed: Observed, settings: TakeoverSettings) -> Plan:
    found: list[str] = []
    refusals: list[str] = []
    changes: list[Change] = []

    for plural, objs in sorted(observed.upstream_only.items()):
        if objs:
            found.append(f"{len(objs)} {plural} (left alone)")
        for obj in objs:
            reason = _in_use_upstream_only(plural, obj)
            if reason:
                refusals.append(reason)

    for kind, claims in (("pcideviceclaims", observed.pci_claims), ("usbdeviceclaims", observed.usb_claims)):
        found.append(f"{len(claims)} {kind}")
        for claim in claims:
            if SKIP_VFIO_ANNOTATION in _str_map(claim, "annotations"):
                refusals.append(
                    f"{kind}/{_name(claim)}: annotated {SKIP_VFIO_ANNOTATION} (a device upstream left to another "
                    "driver, e.g. vGPU); nothing would maintain it"
                )

    claimed = {_name(c) for c in observed.pci_claims}
    for dev in observed.pci_devices:
        override = _str_map(dev, "annotations").get(OVERRIDE_RESOURCE_NAME)
        if override and _name(dev) in claimed:
            refusals.append(
                f"pcidevices/{_name(dev)}: claimed under upstream's {OVERRIDE_RESOURCE_NAME} {override!r}, which the "
                "agent does not keep; VMs naming it would lose the device (release it or drop the override first)"
            )

    changes += _claim_changes("pcideviceclaims", observed.pci_claims, UPSTREAM_PCI_FINALIZER, observed.users)
    changes += _claim_changes("usbdeviceclaims", observed.usb_claims, UPSTREAM_USB_FINALIZER, observed.users)
    changes += _finalizer_changes(Target("v1", "nodes", ""), observed.nodes, UPSTREAM_NODE_FINALIZER, found)
    changes += _finalizer_changes(
        Target("kubevirt.io/v1", "virtualmachineinstances", ""), observed.vmis, UPSTREAM_VMI_FINALIZER, found
    )

    found.append(f"{len(observed.node_devices)} nodes.devices.harvesterhci.io objects")
    for obj in observed.node_devices:
        target = Target("devices.harvesterhci.io/v1beta1", "nodes", _name(obj))
        changes.append(Change(target, "delete", "upstream's per-node object; nothing reads it any more"))

    for api_version, plural, name in UPSTREAM_WEBHOOKS:
        if (plural, name) in observed.webhook_configurations:
            found.append(f"upstream {plural}/{name}")
            changes.append(
                Change(Target(api_version, plural, name), "delete", "upstream's webhook (failurePolicy Ignore)")
            )
    for name in UPSTREAM_SECRETS:
        if name in observed.secrets:
            found.append(f"upstream secret {UPSTREAM_NAMESPACE}/{name}")
            changes.append(
                Change(Target("v1", "secrets", name, UPSTREAM_NAMESPACE), "delete", "upstream's webhook certificate")
            )

    changes += _vm_record_changes(observed, found)
    changes += _crd_changes(observed.crds, settings, found)
    if not observed.kubevirts:
        found.append("no KubeVirt CR")
    for kv in observed.kubevirts:
        permits = _permit_change(observed, kv, found)
        if permits is not None:
            changes.append(permits)
    addon = _addon_change(observed.addon, settings.addon, found, refusals)
    if addon is not None:
        changes.append(addon)
    return Plan(tuple(found), tuple(changes) if not refusals else (), tuple(refusals))


def _claim_changes(
    plural: str, claims: Sequence[Mapping[str, Any]], upstream_finalizer: str, users: Sequence[Mapping[str, Any]]
) -> list[Change]:
    out: list[Change] = []
    for claim in claims:
        name = _name(claim)
        annotations = _str_map(claim, "annotations")
        finalizers = _finalizers(claim)
        deleting = bool(_meta(claim).get("deletionTimestamp"))
        ops: list[dict[str, Any]] = []
        why: list[str] = []
        if names.ANNOTATION_REQUESTED_BY not in annotations:
            user_name = str(_section(claim, "spec").get("userName") or "")
            owner = map_owner(user_name, users)
            ops += _map_ops(
                claim,
                "annotations",
                {names.ANNOTATION_REQUESTED_BY: owner, names.ANNOTATION_ADOPTED: names.ADOPTED_FROM},
            )
            why.append(f"owner {owner} (spec.userName {user_name!r})")
        if upstream_finalizer in finalizers:
            wanted = [f for f in finalizers if f != upstream_finalizer]
            # a claim being deleted cannot gain a finalizer; the agent releases what it finds bound on its own
            if not deleting and FINALIZER_AGENT not in wanted:
                wanted.append(FINALIZER_AGENT)
            ops.append({"op": "replace", "path": "/metadata/finalizers", "value": wanted})
            why.append(f"finalizer {upstream_finalizer} replaced" + ("" if deleting else f" by {FINALIZER_AGENT}"))
        if ops:
            target = Target(names.API_VERSION, plural, name)
            out.append(Change(target, "patch", "adopt: " + "; ".join(why), (_rv_test(claim), *ops)))
    return out


def _vm_record_changes(observed: Observed, found: list[str]) -> list[Change]:
    """Record the VMs that name a claimed device's current name (grandfathered), and drop records nobody wrote."""
    claimed = {_name(c) for c in observed.pci_claims}
    offered = {
        str(_section(d, "status").get("resourceName") or "") for d in observed.pci_devices if _name(d) in claimed
    }
    offered.update(f"kubevirt.io/{_name(c)}" for c in observed.usb_claims)
    offered.discard("")
    out: list[Change] = []
    adopted = 0
    for vm in observed.vms:
        try:
            asked = sorted({d.device_name for d in hostdevices.host_devices(vm)} & offered)
        except MalformedObject:
            continue
        wanted = (
            records.Requester(names.ADOPTED_REQUESTER, via="takeover", adopted=tuple(asked)).encode() if asked else None
        )
        current = _str_map(vm, "annotations").get(records.ANNOTATION)
        if current == wanted:
            continue
        ops = _map_ops(vm, "annotations", {records.ANNOTATION: wanted} if wanted else {})
        if wanted is None:
            ops = [{"op": "remove", "path": "/metadata/annotations/" + _pointer(records.ANNOTATION)}]
        target = Target("kubevirt.io/v1", "virtualmachines", _name(vm), str(_meta(vm).get("namespace", "")))
        why = f"record the devices it used upstream: {', '.join(asked)}" if asked else "drop a record nobody wrote"
        out.append(Change(target, "patch", why, (_rv_test(vm), *ops)))
        adopted += bool(asked)
    found.append(f"{len(observed.vms)} virtualmachines, {adopted} naming claimed devices")
    return out


def _finalizer_changes(
    kind: Target, objs: Sequence[Mapping[str, Any]], finalizer: str, found: list[str]
) -> list[Change]:
    out: list[Change] = []
    for obj in objs:
        current = _finalizers(obj)
        if finalizer not in current:
            continue
        target = Target(kind.api_version, kind.plural, _name(obj), str(_meta(obj).get("namespace", "")))
        ops = (
            _rv_test(obj),
            {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in current if f != finalizer]},
        )
        out.append(Change(target, "patch", f"remove {finalizer} (blocks deletion once upstream is gone)", ops))
    found.append(f"{len(out)} {kind.plural} with {finalizer}")
    return out


def _crd_changes(crds: Sequence[Mapping[str, Any]], settings: TakeoverSettings, found: list[str]) -> list[Change]:
    out: list[Change] = []
    for crd in crds:
        name = _name(crd)
        if name not in OUR_CRDS:
            continue
        found.append(f"crd {name}")
        ops = _map_ops(
            crd,
            "annotations",
            {HELM_RELEASE_NAME: settings.release_name, HELM_RELEASE_NAMESPACE: settings.release_namespace},
        ) + _map_ops(crd, "labels", {HELM_MANAGED_BY: "Helm"})
        if ops:
            target = Target("apiextensions.k8s.io/v1", "customresourcedefinitions", name)
            out.append(Change(target, "patch", "Helm ownership metadata so the chart adopts it", (_rv_test(crd), *ops)))
    return out


# -- permits ----------------------------------------------------------------------------------------------------


def _our_resources(observed: Observed) -> tuple[set[str], dict[str, str]]:
    """Resource names of claimed devices, and for PCI ones the vendor:device selector of a device that has it."""
    claimed_pci = {_name(c) for c in observed.pci_claims}
    pci: dict[str, str] = {}
    for dev in observed.pci_devices:
        status = _section(dev, "status")
        rn = str(status.get("resourceName") or "")
        if rn and _name(dev) in claimed_pci:
            pci.setdefault(rn, f"{status.get('vendorId', '')}:{status.get('deviceId', '')}")
    usb = {names.usb_resource_name(_name(c)) for c in observed.usb_claims}
    return usb | set(pci), pci


def repair_permits(
    permitted: Mapping[str, Any], ours: set[str], selectors: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Permits without duplicate resource names, with externalResourceProvider on ours, and an entry for every
    claimed PCI resource. No resource name is ever dropped (a VM may name it)."""
    out: dict[str, Any] = dict(permitted)
    notes: list[str] = []
    for key in ("pciHostDevices", "usb"):
        entries = permitted.get(key)
        if not isinstance(entries, list):
            entries = []
        seen: set[str] = set()
        fixed: list[Any] = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                fixed.append(entry)
                continue
            rn = str(entry.get("resourceName", ""))
            if rn in seen:
                notes.append(f"duplicate {key} entry {rn} removed")
                continue
            seen.add(rn)
            if rn in ours and entry.get("externalResourceProvider") is not True:
                entry = {**entry, "externalResourceProvider": True}
                notes.append(f"{key} entry {rn}: externalResourceProvider set")
            fixed.append(entry)
        if key == "pciHostDevices":
            for rn in sorted(selectors):
                if rn not in seen and selectors[rn] != ":":
                    fixed.append(
                        {"pciVendorSelector": selectors[rn], "resourceName": rn, "externalResourceProvider": True}
                    )
                    notes.append(f"{key} entry {rn} added (a claimed device has it)")
        if fixed or key in permitted:
            out[key] = fixed
    return out, notes


def _permit_change(observed: Observed, kv: Mapping[str, Any], found: list[str]) -> Change | None:
    config = _section(_section(kv, "spec"), "configuration")
    permitted = _section(config, "permittedHostDevices")
    ours, selectors = _our_resources(observed)
    repaired, notes = repair_permits(permitted, ours, selectors)
    count = sum(len(v) for k, v in permitted.items() if k in ("pciHostDevices", "usb") and isinstance(v, list))
    found.append(f"kubevirt {_name(kv)}: {count} permitted host devices")
    if not notes:
        return None
    target = Target("kubevirt.io/v1", "kubevirts", _name(kv), str(_meta(kv).get("namespace", "")))
    ops: list[dict[str, Any]] = [_rv_test(kv)]
    if "configuration" not in _section(kv, "spec"):
        ops.append({"op": "add", "path": "/spec/configuration", "value": {"permittedHostDevices": repaired}})
    else:
        ops.append({"op": "add", "path": "/spec/configuration/permittedHostDevices", "value": repaired})
    return Change(target, "patch", "repair permits: " + "; ".join(notes), tuple(ops))


# -- the Addon --------------------------------------------------------------------------------------------------


def _addon_change(
    addon: Mapping[str, Any] | None, wanted: AddonTarget | None, found: list[str], refusals: list[str]
) -> Change | None:
    if addon is None:
        found.append("no Harvester Addon pcidevices-controller")
        return None
    spec = _section(addon, "spec")
    found.append(f"addon {_name(addon)}: chart {spec.get('chart')} {spec.get('version')} from {spec.get('repo')}")
    if wanted is None:
        return None
    if spec.get("chart") != CHART_NAME:
        refusals.append(
            f"addon {_name(addon)}: its chart is {spec.get('chart')!r}, not {CHART_NAME} (it cannot change)"
        )
        return None
    desired = {"repo": wanted.repo, "version": wanted.version, "valuesContent": wanted.values}
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": f"/spec/{k}", "value": v} for k, v in desired.items() if spec.get(k) != v
    ]
    if not ops:
        return None
    target = Target("harvesterhci.io/v1beta1", "addons", _name(addon), str(_meta(addon).get("namespace", "")))
    test_chart = {"op": "test", "path": "/spec/chart", "value": CHART_NAME}
    return Change(
        target, "patch", f"point the Addon at {wanted.repo} {wanted.version}", (_rv_test(addon), test_chart, *ops)
    )
