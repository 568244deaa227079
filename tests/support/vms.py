"""Builders of KubeVirt objects (VMs, VMIs, pools, replica sets, instancetypes) and pods, and their reviews.

Shaped as the Harvester UI and virt-controller send them: a VM's hostDevices entry is named like the PCIDevice and
asks for its resource name; virt-controller's VMIs and pods carry a controller ownerReference with the owner's uid.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

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
