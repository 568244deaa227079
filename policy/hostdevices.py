"""Host devices of VM-like objects: where each kind keeps `hostDevices` and `gpus`, read with set semantics.

The Harvester UI saves whole objects and reorders entries, so two objects name "the same devices" when their sorted
entries are equal; only a change of that multiset makes an UPDATE worth judging (rule A9). `Workload` is the slim
view the cluster index keeps of VMs, VMIs, pools, replica sets and instancetypes (a 30 KB VM becomes a few tuples).
Pods are not workloads: `pod_resources` reads the extended resources their containers request (rule A12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy.objects import MalformedObject, OwnerReference

VM = "VirtualMachine"
VMI = "VirtualMachineInstance"
POOL = "VirtualMachinePool"
REPLICA_SET = "VirtualMachineInstanceReplicaSet"
INSTANCETYPE = "VirtualMachineInstancetype"
CLUSTER_INSTANCETYPE = "VirtualMachineClusterInstancetype"

# kind -> the keys from the object to the `devices` map (hostDevices and gpus); instancetypes keep them in spec
DEVICE_PATHS: dict[str, tuple[str, ...]] = {
    VM: ("spec", "template", "spec", "domain", "devices"),
    VMI: ("spec", "domain", "devices"),
    POOL: ("spec", "virtualMachineTemplate", "spec", "template", "spec", "domain", "devices"),
    REPLICA_SET: ("spec", "template", "spec", "domain", "devices"),
    INSTANCETYPE: ("spec",),
    CLUSTER_INSTANCETYPE: ("spec",),
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
}
WORKLOAD_KINDS = tuple(DEVICE_PATHS)
FIELDS = ("hostDevices", "gpus")
NODE_NAME_FIELD = "metadata.name"  # the node affinity the mutator adds matches this field


@dataclass(frozen=True, slots=True, order=True)
class HostDevice:
    field: str  # "hostDevices" or "gpus"
    name: str
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
        if kind not in DEVICE_PATHS:
            raise MalformedObject(f"kind {kind!r} has no host devices")
        meta = _mapping(obj.get("metadata"), "metadata")
        name, namespace = meta.get("name"), meta.get("namespace") or ""
        if not isinstance(name, str) or not name or not isinstance(namespace, str):
            raise MalformedObject("metadata.name must be a non-empty string")
        # the webhook's watch keys namespaced objects as "<namespace>/<name>" (see webhook.workloads)
        if "/" in name:
            namespace, _, name = name.partition("/")
        uid = meta.get("uid") or ""
        refs = meta.get("ownerReferences") or []
        if not isinstance(refs, list) or not isinstance(uid, str):
            raise MalformedObject("metadata.ownerReferences must be a list")
        controller = None
        for ref in refs:
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                controller = OwnerReference.from_dict(ref)
        status = _mapping(obj.get("status"), "status")
        node = status.get("nodeName") if kind == VMI else pinned_node(obj)
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
        )


def host_devices(obj: Mapping[str, Any]) -> tuple[HostDevice, ...]:
    """The sorted `hostDevices` and `gpus` entries of obj (of a kind in DEVICE_PATHS); MalformedObject if misshapen."""
    devices = _dig(obj, DEVICE_PATHS[str(obj.get("kind"))])
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
    return tuple(sorted(out))


def device_set(obj: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The sorted deviceNames of obj, or None when obj is absent or misshapen (then it counts as changed)."""
    if obj is None:
        return None
    try:
        return tuple(sorted(d.device_name for d in host_devices(obj)))
    except MalformedObject:
        return None


def instancetype_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
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
    kind = matcher.get("kind") or CLUSTER_INSTANCETYPE
    return (str(kind), name)


def pinned_node(obj: Mapping[str, Any]) -> str:
    """The node a required node-affinity term of the pod-template pins obj to by `metadata.name`, or ""."""
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
    for term in terms if isinstance(terms, list) else ():
        for expr in (term.get("matchFields") if isinstance(term, Mapping) else None) or ():
            if (
                isinstance(expr, Mapping)
                and expr.get("key") == NODE_NAME_FIELD
                and expr.get("operator") == "In"
                and isinstance(expr.get("values"), list)
                and len(expr["values"]) == 1
                and isinstance(expr["values"][0], str)
            ):
                return str(expr["values"][0])
    return ""


def pod_resources(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The sorted extended-resource names a pod's containers and init containers request or limit."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return ()
    found: set[str] = set()
    for key in ("containers", "initContainers", "ephemeralContainers"):
        containers = spec.get(key)
        for c in containers if isinstance(containers, list) else ():
            resources = c.get("resources") if isinstance(c, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            for part in ("limits", "requests"):
                values = resources.get(part)
                if isinstance(values, Mapping):
                    found.update(k for k in values if isinstance(k, str) and "/" in k)
    return tuple(sorted(found))


def json_pointer(path: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    cursor: Mapping[str, Any] = obj
    for key in path:
        cursor = _mapping(cursor.get(key), key)
    return cursor


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject(f"{where} must be an object")
    return value
