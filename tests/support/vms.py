"""Builders of KubeVirt objects (VMs, VMIs, pools, replica sets, instancetypes) and pods, and their reviews.

Shaped as the Harvester UI and virt-controller send them: a VM's hostDevices entry is named like the PCIDevice and
asks for its resource name; virt-controller's VMIs and pods carry a controller ownerReference with the owner's uid.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from policy import hostdevices, records
from policy.review import UserInfo
from policy.settings import VIRT_CONTROLLERS
from tests.support.objects import TENANT_A, user

VIRT_CONTROLLER = sorted(VIRT_CONTROLLERS)[0]
RESTORE = "system:serviceaccount:harvester-system:harvester"

Entry = tuple[str, str]  # (name, deviceName)

PLURALS = {
    "VirtualMachine": ("kubevirt.io", "v1", "virtualmachines"),
    "VirtualMachineInstance": ("kubevirt.io", "v1", "virtualmachineinstances"),
    "VirtualMachineInstanceReplicaSet": ("kubevirt.io", "v1", "virtualmachineinstancereplicasets"),
    "VirtualMachinePool": ("pool.kubevirt.io", "v1alpha1", "virtualmachinepools"),
    "VirtualMachineInstancetype": ("instancetype.kubevirt.io", "v1beta1", "virtualmachineinstancetypes"),
    "VirtualMachineClusterInstancetype": ("instancetype.kubevirt.io", "v1beta1", "virtualmachineclusterinstancetypes"),
    "Pod": ("", "v1", "pods"),
    "VirtualMachineRestore": ("snapshot.kubevirt.io", "v1beta1", "virtualmachinerestores"),
    "VirtualMachineSnapshot": ("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots"),
    "VirtualMachineSnapshotContent": ("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshotcontents"),
    "VirtualMachineClone": ("clone.kubevirt.io", "v1beta1", "virtualmachineclones"),
}


def uid(seed: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "vms/" + seed))


def entry(device: Mapping[str, Any]) -> Entry:
    """The UI's hostDevices entry for one of our device objects."""
    return (device["metadata"]["name"], device["status"]["resourceName"])


def _devices(host: Sequence[Entry], gpus: Sequence[Entry]) -> dict[str, Any]:
    devices: dict[str, Any] = {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]}
    if host:
        devices["hostDevices"] = [{"name": n, "deviceName": d} for n, d in host]
    if gpus:
        devices["gpus"] = [{"name": n, "deviceName": d} for n, d in gpus]
    return devices


def _vmi_spec(host: Sequence[Entry], gpus: Sequence[Entry]) -> dict[str, Any]:
    return {
        "domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}, "devices": _devices(host, gpus)},
        "volumes": [{"name": "rootdisk", "persistentVolumeClaim": {"claimName": "rootdisk"}}],
        "evictionStrategy": "LiveMigrateIfPossible",
    }


def _meta(kind: str, name: str, namespace: str, owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid(f"{kind}/{namespace}/{name}"), "labels": {"app": name}}
    if namespace:
        meta["namespace"] = namespace
    if owner is not None:
        group, version, _ = PLURALS[owner["kind"]]
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{group}/{version}",
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _obj(kind: str, meta: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    group, version, _ = PLURALS[kind]
    return {"apiVersion": f"{group}/{version}".lstrip("/"), "kind": kind, "metadata": meta, "spec": spec}


def vm(
    name: str,
    namespace: str = "ns-a",
    host: Sequence[Entry] = (),
    gpus: Sequence[Entry] = (),
    *,
    instancetype: tuple[str, str] | None = None,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runStrategy": "RerunOnFailure",
        "template": {"metadata": {"labels": {"app": name}}, "spec": _vmi_spec(host, gpus)},
    }
    if instancetype is not None:
        spec["instancetype"] = {"kind": instancetype[0], "name": instancetype[1]}
    return _obj("VirtualMachine", _meta("VirtualMachine", name, namespace, owner), spec)


def vmi(
    name: str,
    namespace: str = "ns-a",
    host: Sequence[Entry] = (),
    gpus: Sequence[Entry] = (),
    *,
    owner: Mapping[str, Any] | None = None,
    node: str = "",
) -> dict[str, Any]:
    obj = _obj("VirtualMachineInstance", _meta("VirtualMachineInstance", name, namespace, owner), _vmi_spec(host, gpus))
    if node:
        obj["status"] = {"nodeName": node, "phase": "Running"}
    return obj


def pool(name: str, namespace: str = "ns-a", host: Sequence[Entry] = (), gpus: Sequence[Entry] = ()) -> dict[str, Any]:
    spec = {
        "replicas": 2,
        "selector": {"matchLabels": {"pool": name}},
        "virtualMachineTemplate": {
            "metadata": {"labels": {"pool": name}},
            "spec": {"runStrategy": "Always", "template": {"spec": _vmi_spec(host, gpus)}},
        },
    }
    return _obj("VirtualMachinePool", _meta("VirtualMachinePool", name, namespace), spec)


def replicaset(
    name: str, namespace: str = "ns-a", host: Sequence[Entry] = (), gpus: Sequence[Entry] = ()
) -> dict[str, Any]:
    spec = {
        "replicas": 2,
        "selector": {"matchLabels": {"rs": name}},
        "template": {"metadata": {"labels": {"rs": name}}, "spec": _vmi_spec(host, gpus)},
    }
    return _obj("VirtualMachineInstanceReplicaSet", _meta("VirtualMachineInstanceReplicaSet", name, namespace), spec)


def instancetype(
    name: str, namespace: str = "ns-a", host: Sequence[Entry] = (), gpus: Sequence[Entry] = ()
) -> dict[str, Any]:
    kind = "VirtualMachineInstancetype" if namespace else "VirtualMachineClusterInstancetype"
    spec: dict[str, Any] = {"cpu": {"guest": 2}, "memory": {"guest": "4Gi"}}
    if host:
        spec["hostDevices"] = [{"name": n, "deviceName": d} for n, d in host]
    if gpus:
        spec["gpus"] = [{"name": n, "deviceName": d} for n, d in gpus]
    return _obj(kind, _meta(kind, name, namespace), spec)


def pod(
    name: str, namespace: str = "ns-a", resources: Sequence[str] = (), *, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": "2", "memory": "4Gi", "devices.kubevirt.io/kvm": "1"}
    limits.update({r: "1" for r in resources})
    spec = {"containers": [{"name": "compute", "image": "virt-launcher", "resources": {"limits": limits}}]}
    return _obj("Pod", _meta("Pod", name, namespace, owner), spec)


def recorded(obj: Mapping[str, Any], username: str, *, groups: Sequence[str] = ("system:authenticated",),
             via: str = "") -> dict[str, Any]:
    """obj as the webhook's mutator left it for `username`: the admission record stamped (policy.records)."""
    out = copy.deepcopy(dict(obj))
    info = user(username, groups=groups)
    requester = records.Requester.of(UserInfo(username, uid=info["uid"], groups=tuple(groups)), via)
    out["metadata"].setdefault("annotations", {})[records.ANNOTATION] = requester.encode()
    return out


def restored(obj: Mapping[str, Any], restore: Mapping[str, Any]) -> dict[str, Any]:
    """A VM as KubeVirt's restore controller writes it: marked with the restore's `<name>-<uid>`."""
    out = copy.deepcopy(dict(obj))
    mark = f"{restore['metadata']['name']}-{restore['metadata']['uid']}"
    out["metadata"].setdefault("annotations", {})[hostdevices.LAST_RESTORE_ANNOTATION] = mark
    return out


def vm_restore(
    name: str, target: str, snapshot: str = "snap", namespace: str = "ns-a", *, patches: Sequence[str] = (),
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": target},
        "virtualMachineSnapshotName": snapshot,
    }
    if patches:
        spec["patches"] = list(patches)
    return _obj("VirtualMachineRestore", _meta("VirtualMachineRestore", name, namespace, owner), spec)


def vm_clone(
    name: str, source: str, target: str = "", namespace: str = "ns-a", *, patches: Sequence[str] = ()
) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": source}}
    if target:
        spec["target"] = {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": target}
    if patches:
        spec["patches"] = list(patches)
    return _obj("VirtualMachineClone", _meta("VirtualMachineClone", name, namespace), spec)


def vm_snapshot(name: str, source: str, content: str, namespace: str = "ns-a") -> dict[str, Any]:
    spec = {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": source}}
    obj = _obj("VirtualMachineSnapshot", _meta("VirtualMachineSnapshot", name, namespace), spec)
    obj["status"] = {"virtualMachineSnapshotContentName": content, "readyToUse": True}
    return obj


def snapshot_content(name: str, vm_copy: Mapping[str, Any], namespace: str = "ns-a") -> dict[str, Any]:
    source = {"virtualMachine": {k: copy.deepcopy(v) for k, v in vm_copy.items() if k in ("metadata", "spec")}}
    spec = {"source": source, "virtualMachineSnapshotName": "snap", "volumeBackups": []}
    return _obj("VirtualMachineSnapshotContent", _meta("VirtualMachineSnapshotContent", name, namespace), spec)


def review(
    operation: str,
    obj: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    *,
    user_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    subject = obj if obj is not None else old
    assert subject is not None
    group, version, plural = PLURALS[subject["kind"]]
    meta = subject["metadata"]
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": subject["kind"]},
        "resource": {"group": group, "version": version, "resource": plural},
        "name": meta["name"],
        "operation": operation,
        "userInfo": dict(user_info) if user_info is not None else user(TENANT_A),
        "object": copy.deepcopy(dict(obj)) if obj is not None else None,
        "oldObject": copy.deepcopy(dict(old)) if old is not None else None,
    }
    if meta.get("namespace"):
        request["namespace"] = meta["namespace"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def virt_controller() -> dict[str, Any]:
    return user(VIRT_CONTROLLER, groups=("system:serviceaccounts", "system:authenticated"))
