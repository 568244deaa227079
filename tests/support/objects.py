"""Builders of our objects and of AdmissionReviews, shaped as the agent writes them and the API server sends them.

Objects are plain dicts (as they come off the wire), so the same builders feed the policy's parsers, the cluster
view, and JSON bodies for the webhook. Claims come in two shapes: `pciclaim(...)` as kubectl users write them, and
`ui=True` as the Harvester UI sends them (named like the device, an ownerReference with apiVersion, kind, name and
uid only, a display userName, no labels).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonpatch  # type: ignore[import-untyped]

from policy import dispatch, names
from policy.access import Grant, StaticAccess
from policy.decision import Decision
from policy.review import AdmissionRequest
from policy.settings import AGENT, CONTROLLER, GC, MIGRATION, PolicySettings
from policy.snapshot import ClusterIndex

GROUP = names.GROUP
API_VERSION = names.API_VERSION
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
ADMIN = "kubernetes-admin"


def _uid(seed: str) -> str:
    """Stable uids, so a claim's ownerReference can name its device's uid in tests."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))


def _managed_fields(manager: str, operation: str = "Update") -> list[dict[str, Any]]:
    return [
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": API_VERSION,
            "time": "2026-11-27T05:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:nodename": {}}}, "f:status": {".": {}}},
        }
    ]


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": _uid(f"node/{name}")}}


def pcidevice(
    node_name: str,
    address: str,
    *,
    vendor: str = "10de",
    device: str = "1eb8",
    class_id: str = "0302",
    iommu_group: str | None = "45",
    members: Sequence[tuple[str, bool]] | None = None,
    resource_name: str | None = None,
    host_critical: bool = False,
    reasons: Sequence[str] = (),
    absent: bool = False,
) -> dict[str, Any]:
    """A PCIDevice as the agent writes it; `members` defaults to the device alone in its group."""
    name = names.pcidevice_name(node_name, address)
    group = iommu_group or ""
    member_list = [(address, False)] if members is None else list(members)
    status: dict[str, Any] = {
        "address": address,
        "vendorId": vendor,
        "deviceId": device,
        "classId": class_id,
        "iommuGroup": group,
        "iommuGroupMembers": [{"address": a, "bridge": b} for a, b in member_list] if group else [],
        "nodeName": node_name,
        "resourceName": resource_name or f"nvidia.com/{name}",
        "description": "3D controller: NVIDIA Corporation TU104GL [Tesla T4]",
        "kernelDriverInUse": "nvidia",
        "hostCritical": host_critical,
        "hostCriticalReasons": list(reasons),
    }
    if absent:
        status["absent"] = True
    return {
        "apiVersion": API_VERSION,
        "kind": "PCIDevice",
        "metadata": {
            "name": name,
            "uid": _uid(f"pcidevice/{name}"),
            "resourceVersion": "1001",
            "creationTimestamp": "2026-11-27T05:00:00Z",
            "labels": {names.LABEL_NODENAME: node_name},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": _uid(f"node/{node_name}")}
            ],
            "managedFields": _managed_fields("pcidevices-agent"),
        },
        "spec": {},
        "status": status,
    }


def usbdevice(
    node_name: str,
    vendor: str = "0951",
    product: str = "1666",
    bus: int = 2,
    dev: int = 4,
    *,
    pci_address: str = "0000:00:14.0",
    resource_name: str | None = None,
    enabled: bool = False,
    absent: bool = False,
) -> dict[str, Any]:
    name = names.usbdevice_name(node_name, vendor, product, bus, dev)
    status: dict[str, Any] = {
        "vendorID": vendor,
        "productID": product,
        "nodeName": node_name,
        "resourceName": resource_name or f"kubevirt.io/{name}",
        "devicePath": f"/dev/bus/usb/{bus:03d}/{dev:03d}",
        "busNum": bus,
        "devNum": dev,
        "description": "DataTraveler 100 G3/G4/SE9 G2/50 Kyson (Kingston Technology)",
        "pciAddress": pci_address,
        "classType": "Mass Storage",
        "enabled": enabled,
        "status": "",
    }
    if absent:
        status["absent"] = True
    return {
        "apiVersion": API_VERSION,
        "kind": "USBDevice",
        "metadata": {
            "name": name,
            "uid": _uid(f"usbdevice/{name}"),
            "resourceVersion": "1002",
            "labels": {names.LABEL_NODENAME: node_name},
            "managedFields": _managed_fields("pcidevices-agent"),
        },
        "status": status,
    }


def _owner_reference(device: Mapping[str, Any]) -> dict[str, Any]:
    meta = device["metadata"]
    return {"apiVersion": API_VERSION, "kind": device["kind"], "name": meta["name"], "uid": meta["uid"]}


def pciclaim(
    device: Mapping[str, Any],
    *,
    owner: str | None = TENANT_A,
    user_name: str | None = None,
    name: str | None = None,
    address: str | None = None,
    node_name: str | None = None,
    ui: bool = False,
    finalizers: Iterable[str] = (),
    owner_references: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A PCIDeviceClaim for `device`; `owner=None` leaves out the owner annotation (as users send it before the
    mutating webhook adds it). `ui=True` shapes it as the Harvester UI sends it."""
    st = device["status"]
    meta: dict[str, Any] = {"name": name or device["metadata"]["name"]}
    if owner is not None:
        meta["annotations"] = {names.ANNOTATION_REQUESTED_BY: owner}
    if ui:
        meta["ownerReferences"] = [_owner_reference(device)]
    elif owner_references is not None:
        meta["ownerReferences"] = owner_references
    finalizer_list = list(finalizers)
    if finalizer_list:
        meta["finalizers"] = finalizer_list
    spec: dict[str, Any] = {
        "address": st["address"] if address is None else address,
        "nodeName": st["nodeName"] if node_name is None else node_name,
        "disableResourcePooling": False,
    }
    if user_name is not None:
        spec["userName"] = user_name
    elif ui:
        spec["userName"] = "admin"
    return {"apiVersion": API_VERSION, "kind": "PCIDeviceClaim", "metadata": meta, "spec": spec}


def usbclaim(
    device: Mapping[str, Any],
    *,
    owner: str | None = TENANT_A,
    user_name: str | None = "admin",
    ui: bool = False,
    ui_location: bool = False,
    finalizers: Iterable[str] = (),
) -> dict[str, Any]:
    """A USBDeviceClaim for `device`; the UI sends only spec.userName (and, in newer versions, `ui_location`:
    spec.nodeName and spec.pciAddress)."""
    meta: dict[str, Any] = {"name": device["metadata"]["name"]}
    if owner is not None:
        meta["annotations"] = {names.ANNOTATION_REQUESTED_BY: owner}
    if ui:
        meta["ownerReferences"] = [_owner_reference(device)]
    finalizer_list = list(finalizers)
    if finalizer_list:
        meta["finalizers"] = finalizer_list
    spec: dict[str, Any] = {}
    if user_name is not None:
        spec["userName"] = user_name
    if ui_location:
        spec["nodeName"] = device["status"]["nodeName"]
        spec["pciAddress"] = device["status"]["pciAddress"]
    return {"apiVersion": API_VERSION, "kind": "USBDeviceClaim", "metadata": meta, "spec": spec}


def kubevirt(pci: Sequence[Mapping[str, Any]] = (), usb: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {
            "name": "kubevirt",
            "namespace": "harvester-system",
            "uid": _uid("kubevirt"),
            "resourceVersion": "4711",
            "generation": 7,
        },
        "spec": {
            "certificateRotateStrategy": {},
            "configuration": {
                "developerConfiguration": {"featureGates": ["HostDevices", "LiveMigration"]},
                "permittedHostDevices": {"pciHostDevices": [dict(e) for e in pci], "usb": [dict(e) for e in usb]},
            },
        },
        "status": {"phase": "Deployed"},
    }


def pci_permit(device: Mapping[str, Any], *, external: bool = True) -> dict[str, Any]:
    st = device["status"]
    entry: dict[str, Any] = {
        "pciVendorSelector": f"{st['vendorId']}:{st['deviceId']}".upper(),
        "resourceName": st["resourceName"],
    }
    if external:
        entry["externalResourceProvider"] = True
    return entry


def usb_permit(device: Mapping[str, Any]) -> dict[str, Any]:
    st = device["status"]
    return {
        "resourceName": st["resourceName"],
        "selectors": [{"vendor": st["vendorID"], "product": st["productID"]}],
        "externalResourceProvider": True,
    }


# -- identities ---------------------------------------------------------------------------------------------------


def user(username: str, *, groups: Sequence[str] = ("system:authenticated",)) -> dict[str, Any]:
    return {"username": username, "uid": _uid(f"user/{username}"), "groups": list(groups)}


def agent(node_name: str | None, username: str = AGENT) -> dict[str, Any]:
    """The agent's projected service-account token, bound to a pod on `node_name` (None: a token without it)."""
    info: dict[str, Any] = {
        "username": username,
        "uid": _uid(f"sa/{username}"),
        "groups": ["system:serviceaccounts", "system:serviceaccounts:harvester-system", "system:authenticated"],
    }
    if node_name is not None:
        info["extra"] = {
            "authentication.kubernetes.io/pod-name": [f"pcidevices-agent-{node_name}"],
            "authentication.kubernetes.io/pod-uid": [_uid(f"pod/{node_name}")],
            NODE_NAME_EXTRA: [node_name],
            "authentication.kubernetes.io/node-uid": [_uid(f"node/{node_name}")],
            "authentication.kubernetes.io/credential-id": ["JTI=" + _uid(f"jti/{node_name}")],
        }
    return info


def controller() -> dict[str, Any]:
    return user(CONTROLLER, groups=("system:serviceaccounts", "system:authenticated"))


def migration() -> dict[str, Any]:
    return user(MIGRATION, groups=("system:serviceaccounts", "system:authenticated"))


def gc() -> dict[str, Any]:
    return user(GC, groups=("system:serviceaccounts", "system:authenticated"))


# -- reviews ------------------------------------------------------------------------------------------------------

_PLURALS = {
    "PCIDevice": "pcidevices",
    "PCIDeviceClaim": "pcideviceclaims",
    "USBDevice": "usbdevices",
    "USBDeviceClaim": "usbdeviceclaims",
    "KubeVirt": "kubevirts",
}

_OPTIONS = {
    "CREATE": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-client-side-apply"},
    "UPDATE": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-edit"},
    "DELETE": {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "propagationPolicy": "Background"},
}


def review(
    operation: str,
    obj: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    *,
    user_info: Mapping[str, Any] | None = None,
    sub_resource: str = "",
    api_version: str = "admission.k8s.io/v1",
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for `obj` (CREATE/UPDATE) or `old` (UPDATE/DELETE).

    On CREATE and UPDATE the API server has already run the status strategy: a main-resource CREATE carries no
    status (the subresource is enabled), an UPDATE keeps the old status; callers pass the objects as they want
    them judged.
    """
    subject = obj if obj is not None else old
    assert subject is not None, "a review needs an object or an old object"
    kind = subject["kind"]
    api = subject["apiVersion"]
    group, _, version = api.rpartition("/")
    resource = {"group": group, "version": version, "resource": _PLURALS[kind]}
    gvk = {"group": group, "version": version, "kind": kind}
    meta = subject["metadata"]
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": resource,
        "requestKind": gvk,
        "requestResource": resource,
        "name": meta["name"],
        "operation": operation,
        "userInfo": dict(user_info) if user_info is not None else user(TENANT_A),
        "object": _as_sent(obj),
        "oldObject": _as_sent(old),
        "dryRun": dry_run,
        "options": _OPTIONS.get(operation),
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    if meta.get("namespace"):
        request["namespace"] = meta["namespace"]
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def _as_sent(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The object with the server-set metadata an admission webhook sees (managedFields included)."""
    if obj is None:
        return None
    sent = copy.deepcopy(dict(obj))
    meta = sent.setdefault("metadata", {})
    meta.setdefault("uid", _uid(f"{sent.get('kind')}/{meta.get('name')}"))
    meta.setdefault("creationTimestamp", "2026-11-27T05:10:00Z")
    meta.setdefault("generation", 1)
    meta.setdefault("managedFields", _managed_fields("kubectl-client-side-apply", "Update"))
    return sent


def without_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as a validating webhook sees it on CREATE: the status subresource's strategy dropped status."""
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    return out


def changed(obj: Mapping[str, Any], path: str | Sequence[str], value: Any) -> dict[str, Any]:
    """A deep copy of obj with `path` (dotted, or a sequence of keys) set to value (None deletes it)."""
    out = copy.deepcopy(dict(obj))
    *parents, last = path.split(".") if isinstance(path, str) else list(path)
    cursor: dict[str, Any] = out
    for key in parents:
        cursor = cursor.setdefault(key, {})
    if value is None:
        cursor.pop(last, None)
    else:
        cursor[last] = value
    return out


# -- judging ------------------------------------------------------------------------------------------------------


def judge(
    review_body: Mapping[str, Any],
    cluster: Iterable[Mapping[str, Any]] = (),
    grants: Iterable[Grant] = (),
    *,
    settings: PolicySettings | None = None,
    mutate: bool = False,
) -> Decision:
    """Decode `review_body` and run the validator (or mutator) over a ClusterIndex of `cluster`."""
    request = AdmissionRequest.from_review(review_body)
    view = ClusterIndex.from_objects(cluster)
    access = StaticAccess([Grant(ADMIN, "*"), *grants])
    run = dispatch.mutate if mutate else dispatch.validate
    return run(request, view, access, settings or PolicySettings())


def admit(
    review_body: Mapping[str, Any],
    cluster: Iterable[Mapping[str, Any]] = (),
    grants: Iterable[Grant] = (),
    *,
    settings: PolicySettings | None = None,
) -> Decision:
    """What the API server does: the mutator's patch applied to the object, then the validator on the result."""
    mutated = judge(review_body, cluster, grants, settings=settings, mutate=True)
    if not mutated.allowed:
        return mutated
    body = copy.deepcopy(dict(review_body))
    request = body["request"]
    if mutated.patch and request.get("object") is not None:
        request["object"] = jsonpatch.apply_patch(request["object"], list(mutated.patch))
    validated = judge(body, cluster, grants, settings=settings)
    if validated.allowed and mutated.warnings:
        return Decision(True, warnings=mutated.warnings + validated.warnings, holds=validated.holds)
    return validated


# -- a standard cluster for the policy tables --------------------------------------------------------------------

NODE1 = "node1"
NODE1A = "node1-a"  # a node whose name extends NODE1: prefix matching would confuse the two
GPU_ADDR = "0000:3b:00.0"
AUDIO_ADDR = "0000:3b:00.1"
BRIDGE_ADDR = "0000:3a:00.0"  # the root port above the GPU: in the group, exempt, never a PCIDevice
XHCI_ADDR = "0000:00:14.0"
SMBUS_ADDR = "0000:00:14.2"
_GPU_GROUP = [(BRIDGE_ADDR, True), (GPU_ADDR, False), (AUDIO_ADDR, False)]
_XHCI_GROUP = [(XHCI_ADDR, False), (SMBUS_ADDR, False)]


class Lab:
    """Devices of two nodes whose names share a prefix, covering every situation of rules A1-A11."""

    gpu = pcidevice(NODE1, GPU_ADDR, members=_GPU_GROUP)
    audio = pcidevice(NODE1, AUDIO_ADDR, device="10f8", class_id="0403", members=_GPU_GROUP)
    nic = pcidevice(
        NODE1,
        "0000:00:1f.6",
        vendor="8086",
        device="15bb",
        class_id="0200",
        iommu_group="12",
        host_critical=True,
        reasons=["carries the default route via mgmt-br, mgmt-bo, eno1"],
    )
    no_iommu = pcidevice(NODE1, "0000:05:00.0", iommu_group=None)
    xhci = pcidevice(
        NODE1, XHCI_ADDR, vendor="8086", device="a36d", class_id="0c03", iommu_group="3", members=_XHCI_GROUP
    )
    smbus = pcidevice(
        NODE1, SMBUS_ADDR, vendor="8086", device="a36f", class_id="0500", iommu_group="3", members=_XHCI_GROUP
    )
    stick = usbdevice(NODE1, pci_address=XHCI_ADDR)
    mouse = usbdevice(NODE1, "046d", "c077", 1, 3, pci_address=XHCI_ADDR)
    gpu_beside_critical = pcidevice(
        NODE1, "0000:5e:00.0", iommu_group="60", members=[("0000:5e:00.0", False), ("0000:5e:00.1", False)]
    )
    critical_sibling = pcidevice(
        NODE1,
        "0000:5e:00.1",
        class_id="0108",
        iommu_group="60",
        members=[("0000:5e:00.0", False), ("0000:5e:00.1", False)],
        host_critical=True,
        reasons=["holds / via nvme0n1p2"],
    )
    gpu_unknown_sibling = pcidevice(
        NODE1, "0000:af:00.0", iommu_group="70", members=[("0000:af:00.0", False), ("0000:af:00.1", False)]
    )
    vmd_gpu = pcidevice(NODE1, "10000:01:00.0", iommu_group="80")
    absent_gpu = pcidevice(NODE1, "0000:d8:00.0", iommu_group="90", absent=True)
    gpu_1a = pcidevice(NODE1A, GPU_ADDR, members=_GPU_GROUP)
    audio_1a = pcidevice(NODE1A, AUDIO_ADDR, device="10f8", class_id="0403", members=_GPU_GROUP)
    stick_1a = usbdevice(NODE1A, pci_address=XHCI_ADDR)

    @classmethod
    def cluster(cls, *extra: Mapping[str, Any], nodes: Sequence[str] = (NODE1, NODE1A)) -> list[Mapping[str, Any]]:
        devices = [v for v in vars(cls).values() if isinstance(v, dict) and "kind" in v]
        return [*(node(n) for n in nodes), *devices, *extra]
