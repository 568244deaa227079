"""Builders of DRA objects (resource.k8s.io/v1) and their AdmissionReviews, as users and controllers write them.

`request(...)` is one entry of `spec.devices.requests` (an `exactly` request, or `firstAvailable` alternatives);
`resourceclaim(...)` and `claim_template(...)` wrap requests; `dra_pciclaim(...)` is a PCIDeviceClaim that offers its
device through DRA (`spec.offer: DRA`). Selectors are plain CEL strings: `pin_pci(...)` names a device exactly.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policy import dra
from tests.support.objects import TENANT_A, pciclaim, usbclaim, user

NAMESPACE = "team-a"
RESOURCE_CLAIM_CONTROLLER = "system:serviceaccount:kube-system:resource-claim-controller"


def pin_pci(name: str) -> str:
    return dra.pin_selector(dra.PCI_DRIVER, dra.ATTR_PCI_DEVICE, name)


def pin_address(address: str, node: str | None = None) -> str:
    expr = dra.pin_selector(dra.PCI_DRIVER, dra.ATTR_PCI_ADDRESS, address)
    if node is not None:
        expr += " && " + dra.pin_selector(dra.PCI_DRIVER, dra.ATTR_NODE, node)
    return expr


def pin_usb(name: str) -> str:
    return dra.pin_selector(dra.USB_DRIVER, dra.ATTR_USB_DEVICE, name)


def request(
    name: str = "dev",
    *selectors: str,
    device_class: str = dra.PCI_DRIVER,
    admin_access: bool = False,
    all_devices: bool = False,
    first_available: Sequence[tuple[str, str, Sequence[str]]] = (),
) -> dict[str, Any]:
    """`first_available`: (subrequest name, class, selectors) alternatives instead of `exactly`."""
    if first_available:
        return {
            "name": name,
            "firstAvailable": [
                {"name": n, "deviceClassName": c, **({"selectors": _sel(s)} if s else {})}
                for n, c, s in first_available
            ],
        }
    exactly: dict[str, Any] = {"deviceClassName": device_class}
    if selectors:
        exactly["selectors"] = _sel(selectors)
    if admin_access:
        exactly["adminAccess"] = True
    if all_devices:
        exactly["allocationMode"] = "All"
    return {"name": name, "exactly": exactly}


def _sel(selectors: Iterable[str]) -> list[dict[str, Any]]:
    return [{"cel": {"expression": s}} for s in selectors]


def resourceclaim(
    name: str,
    *requests: Mapping[str, Any],
    namespace: str = NAMESPACE,
    annotations: Mapping[str, str] | None = None,
    generate_name: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace}
    if generate_name is not None:
        meta["generateName"] = generate_name
    else:
        meta["name"] = name
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": f"{dra.GROUP}/{dra.VERSION}",
        "kind": "ResourceClaim",
        "metadata": meta,
        "spec": {"devices": {"requests": [dict(r) for r in requests] or [request()]}},
    }


def claim_template(
    name: str,
    *requests: Mapping[str, Any],
    namespace: str = NAMESPACE,
    annotations: Mapping[str, str] | None = None,
    inner_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    inner: dict[str, Any] = {}
    if inner_annotations:
        inner["annotations"] = dict(inner_annotations)
    spec: dict[str, Any] = {"spec": {"devices": {"requests": [dict(r) for r in requests] or [request()]}}}
    if inner:
        spec["metadata"] = inner
    return {"apiVersion": f"{dra.GROUP}/{dra.VERSION}", "kind": "ResourceClaimTemplate", "metadata": meta,
            "spec": spec}  # fmt: skip


def from_template(template: Mapping[str, Any], pod: str = "launcher") -> dict[str, Any]:
    """The claim the resource claim controller makes for `pod` from `template`."""
    inner = template["spec"]
    annotations = dict((inner.get("metadata") or {}).get("annotations") or {})
    annotations["resource.kubernetes.io/pod-claim-name"] = "dev"
    claim = resourceclaim(
        "", namespace=template["metadata"]["namespace"], annotations=annotations, generate_name=f"{pod}-dev-"
    )
    claim["spec"] = copy.deepcopy(inner["spec"])
    claim["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": str(uuid.uuid4()), "controller": True}
    ]
    return claim


def device_class(name: str, *selectors: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"selectors": _sel(selectors)} if selectors else {}
    return {"apiVersion": f"{dra.GROUP}/{dra.VERSION}", "kind": "DeviceClass", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def our_classes() -> list[dict[str, Any]]:
    """The DeviceClasses the chart installs."""
    return [device_class(d, f'device.driver == "{d}"') for d in dra.DRIVERS]


def dra_pciclaim(device: Mapping[str, Any], *, owner: str = TENANT_A) -> dict[str, Any]:
    claim = pciclaim(device, owner=owner)
    claim["spec"]["offer"] = dra.OFFER_DRA
    return claim


def dra_usbclaim(device: Mapping[str, Any], *, owner: str = TENANT_A) -> dict[str, Any]:
    claim = usbclaim(device, owner=owner)
    claim["spec"]["offer"] = dra.OFFER_DRA
    return claim


_PLURALS = {"ResourceClaim": "resourceclaims", "ResourceClaimTemplate": "resourceclaimtemplates"}


def dra_review(
    operation: str,
    obj: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    *,
    user_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview for a ResourceClaim or ResourceClaimTemplate (as the API server sends it, v1)."""
    subject = obj if obj is not None else old
    assert subject is not None
    gvk = {"group": dra.GROUP, "version": dra.VERSION, "kind": subject["kind"]}
    resource = {"group": dra.GROUP, "version": dra.VERSION, "resource": _PLURALS[subject["kind"]]}
    meta = subject["metadata"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": resource,
            "requestKind": gvk,
            "requestResource": resource,
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "operation": operation,
            "userInfo": dict(user_info) if user_info is not None else user(TENANT_A),
            "object": copy.deepcopy(dict(obj)) if obj is not None else None,
            "oldObject": copy.deepcopy(dict(old)) if old is not None else None,
            "dryRun": False,
        },
    }
