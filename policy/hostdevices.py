"""Host devices of VM-like objects: where each kind keeps `hostDevices` and `gpus`, read with set semantics.

The Harvester UI saves whole objects and reorders entries, so two objects name "the same devices" when their sorted
entries are equal; only a change of that multiset makes an UPDATE worth judging (rule A9). `Workload` is the slim
view the cluster index keeps of VMs, VMIs, pools, replica sets and instancetypes (a 30 KB VM becomes a few tuples).
Pods are not workloads: `pod_resources` reads the extended resources their containers request (rule A12).

A device can be asked for through more than `hostDevices` and `gpus`: KubeVirt copies `domain.resources` requests and
limits into the launcher pod's compute container, so extended resources there are read as entries too (field
`resources`, once per unit asked for), and so is every container of a pod.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy import records
from policy.objects import MalformedObject, OwnerReference, as_mapping

VM = "VirtualMachine"
VMI = "VirtualMachineInstance"
POOL = "VirtualMachinePool"
REPLICA_SET = "VirtualMachineInstanceReplicaSet"
INSTANCETYPE = "VirtualMachineInstancetype"
CLUSTER_INSTANCETYPE = "VirtualMachineClusterInstancetype"
SNAPSHOT_CONTENT = "VirtualMachineSnapshotContent"  # holds a copy of a VM that a restore turns back into a VM

# kind -> the keys from the object to the `devices` map (hostDevices and gpus); instancetypes keep them in spec
DEVICE_PATHS: dict[str, tuple[str, ...]] = {
    VM: ("spec", "template", "spec", "domain", "devices"),
    VMI: ("spec", "domain", "devices"),
    POOL: ("spec", "virtualMachineTemplate", "spec", "template", "spec", "domain", "devices"),
    REPLICA_SET: ("spec", "template", "spec", "domain", "devices"),
    INSTANCETYPE: ("spec",),
    CLUSTER_INSTANCETYPE: ("spec",),
    SNAPSHOT_CONTENT: ("spec", "source", "virtualMachine", "spec", "template", "spec", "domain", "devices"),
}
# kind -> the keys to `domain.resources` (instancetypes have none)
RESOURCE_PATHS: dict[str, tuple[str, ...]] = {
    kind: (*path[:-1], "resources") for kind, path in DEVICE_PATHS.items() if path[-1] == "devices"
}
# kind -> the keys to the pod-template spec whose affinity pins the VM (kinds that schedule VMIs)
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    VM: ("spec", "template", "spec"),
    VMI: ("spec",),
    POOL: ("spec", "virtualMachineTemplate", "spec", "template", "spec"),
    REPLICA_SET: ("spec", "template", "spec"),
}
# kind -> the keys to the `instancetype` matcher ({kind, name})
INSTANCETYPE_PATHS: dict[str, tuple[str, ...]] = {
    VM: ("spec", "instancetype"),
    POOL: ("spec", "virtualMachineTemplate", "spec", "instancetype"),
    SNAPSHOT_CONTENT: ("spec", "source", "virtualMachine", "spec", "instancetype"),
}
# KubeVirt matches an instancetype reference's kind case-insensitively, singular or plural, and an empty kind means
# the cluster-wide kind (pkg/instancetype/find): the same spellings resolve to the same object here.
_INSTANCETYPE_KINDS = {
    "virtualmachineinstancetype": INSTANCETYPE,
    "virtualmachineinstancetypes": INSTANCETYPE,
    "virtualmachineclusterinstancetype": CLUSTER_INSTANCETYPE,
    "virtualmachineclusterinstancetypes": CLUSTER_INSTANCETYPE,
    "": CLUSTER_INSTANCETYPE,
}
WORKLOAD_KINDS = tuple(DEVICE_PATHS)
FIELDS = ("hostDevices", "gpus")
RESOURCES_FIELD = "resources"
# KubeVirt's restore controller marks the VM it writes with "<restore name>-<restore uid>"
LAST_RESTORE_ANNOTATION = "restore.kubevirt.io/lastRestoreUID"
MAX_UNITS = 16  # one resource asked for in larger numbers is judged as this many units
NODE_NAME_FIELD = "metadata.name"  # the node affinity the mutator adds matches this field


@dataclass(frozen=True, slots=True, order=True)
class HostDevice:
    field: str  # "hostDevices", "gpus" or "resources"
    name: str  # the entry's name ("" for resources)
    device_name: str  # the resource name the entry asks for


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    namespace: str  # "" for cluster instancetypes
    name: str
    uid: str
    devices: tuple[HostDevice, ...]  # sorted: equal tuples are equal sets
    instancetype: tuple[str, str] | None  # (kind, name) of spec.instancetype
    controller: OwnerReference | None  # the ownerReference with controller: true
    node: str  # a VMI's status.nodeName; for others the node our node affinity pins them to
    deleting: bool
    requester: records.Requester | None = None  # the webhook's record of who asked (records.ANNOTATION)
    last_restore: str = ""  # KubeVirt's LAST_RESTORE_ANNOTATION: the restore that wrote this VM

    @property
    def key(self) -> str:
        """The index key: `<namespace>/<name>` (`/<name>` when cluster-scoped)."""
        return f"{self.namespace}/{self.name}"

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(sorted(d.device_name for d in self.devices))

    @classmethod
    def from_dict(cls, obj: object) -> Workload:
        if not isinstance(obj, Mapping):
            raise MalformedObject("object must be an object")
        kind = obj.get("kind")
        if not isinstance(kind, str) or kind not in DEVICE_PATHS:
            raise MalformedObject(f"kind {kind!r} has no host devices")
        _check_instancetype(obj)
        meta = as_mapping(obj.get("metadata"), "metadata")
        name, namespace = meta.get("name"), meta.get("namespace", "")
        namespace = "" if namespace is None else namespace
        if not isinstance(name, str) or not name or not isinstance(namespace, str):
            raise MalformedObject("metadata.name must be a non-empty string")
        # the webhook's watch keys namespaced objects as "<namespace>/<name>" (see webhook.workloads)
        if "/" in name:
            namespace, _, name = name.partition("/")
        uid = meta.get("uid") or ""
        annotations = meta.get("annotations") or {}
        if not isinstance(annotations, Mapping):
            raise MalformedObject("metadata.annotations must be an object")
        last_restore = annotations.get(LAST_RESTORE_ANNOTATION, "")
        refs = meta.get("ownerReferences") or []
        if not isinstance(refs, list) or not isinstance(uid, str):
            raise MalformedObject("metadata.ownerReferences must be a list")
        controller = None
        for ref in refs:
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                controller = OwnerReference.from_dict(ref)
        status = as_mapping(obj.get("status"), "status")
        node = (status.get("nodeName") or pinned_node(obj)) if kind == VMI else pinned_node(obj)
        return cls(
            kind=kind,
            namespace=namespace,
            name=name,
            uid=uid,
            devices=host_devices(obj),
            instancetype=instancetype_of(obj),
            controller=controller,
            node=node if isinstance(node, str) else "",
            deleting=meta.get("deletionTimestamp") is not None,
            requester=records.Requester.decode(annotations.get(records.ANNOTATION)),
            last_restore=last_restore if isinstance(last_restore, str) else "",
        )


def host_devices(obj: Mapping[str, Any]) -> tuple[HostDevice, ...]:
    """The sorted `hostDevices`, `gpus` and `domain.resources` entries of obj (of a kind in DEVICE_PATHS);
    MalformedObject if misshapen."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in DEVICE_PATHS:
        raise MalformedObject(f"kind {kind!r} has no host devices")
    devices = _dig(obj, DEVICE_PATHS[kind])
    out: list[HostDevice] = []
    for field in FIELDS:
        entries = devices.get(field)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise MalformedObject(f"{field} must be a list")
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise MalformedObject(f"{field}[] must be objects")
            name, device_name = entry.get("name", ""), entry.get("deviceName", "")
            if not isinstance(name, str) or not isinstance(device_name, str):
                raise MalformedObject(f"{field}[].name and .deviceName must be strings")
            out.append(HostDevice(field, name, device_name))
    path = RESOURCE_PATHS.get(kind)
    if path is not None:
        for resource, units in extended_resources(_dig(obj, path)).items():
            out.extend(HostDevice(RESOURCES_FIELD, "", resource) for _ in range(units))
    return tuple(sorted(out))


def extended_resources(resources: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources (names with a '/') of a `resources` object and how many units it asks for: the larger of
    request and limit (the API server makes a missing request equal the limit); a quantity that is not a whole number
    counts as one unit, so a misspelt quantity cannot hide a name."""
    out: dict[str, int] = {}
    for part in ("limits", "requests"):
        values = resources.get(part)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise MalformedObject(f"resources.{part} must be an object")
        for key, quantity in values.items():
            if isinstance(key, str) and "/" in key:
                out[key] = max(out.get(key, 0), _units(quantity))
    return out


def _units(quantity: object) -> int:
    text = str(quantity).strip() if isinstance(quantity, str | int) and not isinstance(quantity, bool) else ""
    return min(int(text), MAX_UNITS) if text.isdigit() and int(text) > 0 else 1


def device_set(obj: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The sorted deviceNames of obj, or None when obj is absent or misshapen (then it counts as changed)."""
    if obj is None:
        return None
    try:
        return tuple(sorted(d.device_name for d in host_devices(obj)))
    except MalformedObject:
        return None


def _check_instancetype(obj: Mapping[str, Any]) -> None:
    """MalformedObject when the instancetype reference is there but not shaped as a matcher: read as absent, it
    would hide the devices it brings."""
    path = INSTANCETYPE_PATHS.get(str(obj.get("kind")))
    if path is None:
        return
    matcher = _dig(obj, path)
    for key in ("name", "kind", "revisionName"):
        if matcher.get(key) is not None and not isinstance(matcher.get(key), str):
            raise MalformedObject(f"instancetype.{key} must be a string")


def instancetype_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of obj's instancetype reference, the kind spelled as the view keys it (KubeVirt's matching)."""
    path = INSTANCETYPE_PATHS.get(str(obj.get("kind")))
    if path is None:
        return None
    try:
        matcher = _dig(obj, path)
    except MalformedObject:
        return None
    name = matcher.get("name")
    if not isinstance(name, str) or not name:
        return None
    kind = matcher.get("kind") or ""
    if not isinstance(kind, str):
        return None
    return (_INSTANCETYPE_KINDS.get(kind.lower(), kind), name)


def pinned_node(obj: Mapping[str, Any]) -> str:
    """The node obj's pod template can only be scheduled to, by required node affinity on `metadata.name`, or "".

    Required terms are ORed, the expressions of one term ANDed: obj is pinned to N only when every term carries
    `metadata.name In [N]` (a term that also names another node can match nothing, which pins it no less). Labels
    (`kubernetes.io/hostname`) are not pins: whoever may label nodes could move them.
    """
    path = POD_SPEC_PATHS.get(str(obj.get("kind")))
    if path is None:
        return ""
    try:
        spec = _dig(obj, path)
        terms = _dig(spec, ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution")).get(
            "nodeSelectorTerms"
        )
    except MalformedObject:
        return ""
    if not isinstance(terms, list) or not terms:
        return ""
    common: set[str] | None = None
    for term in terms:
        pins = set()
        for expr in (term.get("matchFields") if isinstance(term, Mapping) else None) or ():
            if (
                isinstance(expr, Mapping)
                and expr.get("key") == NODE_NAME_FIELD
                and expr.get("operator") == "In"
                and isinstance(expr.get("values"), list)
                and len(expr["values"]) == 1
                and isinstance(expr["values"][0], str)
            ):
                pins.add(str(expr["values"][0]))
        common = pins if common is None else common & pins
    return sorted(common)[0] if common else ""


def scheduling(obj: Mapping[str, Any] | None) -> str:
    """The parts of obj's pod template that decide where it runs (affinity, nodeSelector, nodeName), comparable."""
    path = POD_SPEC_PATHS.get(str(obj.get("kind"))) if obj is not None else None
    if obj is None or path is None:
        return ""
    cursor: Any = obj
    for key in path:
        cursor = cursor.get(key) if isinstance(cursor, Mapping) else None
    if not isinstance(cursor, Mapping):
        return ""
    return repr([cursor.get("affinity"), cursor.get("nodeSelector"), cursor.get("nodeName")])


def pod_resources(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The extended-resource names a pod asks for, once per unit: every container, init and ephemeral container,
    and pod-level resources (sorted); MalformedObject when a part the kubelet reads is not shaped as the API says
    (the API server never sends such a pod, but a part read as absent must never hide a request)."""
    spec = pod.get("spec")
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        raise MalformedObject("spec must be an object")
    found: list[str] = []
    parts: list[Any] = [spec.get("resources")]
    for key in ("containers", "initContainers", "ephemeralContainers"):
        containers = spec.get(key)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise MalformedObject(f"spec.{key} must be a list")
        for c in containers:
            if not isinstance(c, Mapping):
                raise MalformedObject(f"spec.{key}[] must be objects")
            parts.append(c.get("resources"))
    for resources in parts:
        if resources is None:
            continue
        if not isinstance(resources, Mapping):
            raise MalformedObject("resources must be an object")
        for name, n in extended_resources(resources).items():
            found.extend([name] * n)
    return tuple(sorted(found))


def json_pointer(path: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    cursor: Mapping[str, Any] = obj
    for key in path:
        cursor = as_mapping(cursor.get(key), key)
    return cursor
